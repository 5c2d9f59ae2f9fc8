package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/sim"
)

const GiB = int64(1) << 30

// fixture runs an embedded server and a worker with devices of 1 GiB each,
// and memctl against them.
type fixture struct {
	t       *testing.T
	srv     *server.Server
	url     string
	cache   string // memctl's --cache-dir
	backend *sim.Backend
}

func newFixture(t *testing.T, devices int) *fixture {
	t.Helper()
	return newFixtureSized(t, devices, GiB)
}

// newFixtureSized is newFixture with devices of perDevice bytes.
func newFixtureSized(t *testing.T, devices int, perDevice int64) *fixture {
	t.Helper()
	srv := natstest.Server(t)
	cfg := worker.DefaultConfig()
	cfg.Node = "n1"
	backend := sim.New(sim.Default(devices, perDevice))
	cfg.Backend = backend
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.DiscoveryWait = 50 * time.Millisecond
	w, err := worker.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx, nc) })
	t.Cleanup(func() { cancel(); wg.Wait(); nc.Close() })
	<-w.Ready()
	return &fixture{t: t, srv: srv, url: srv.ClientURL(), cache: t.TempDir(), backend: backend}
}

// memctl runs the CLI and returns its exit code, stdout and stderr.
func (f *fixture) memctl(args ...string) (int, string, string) {
	f.t.Helper()
	return f.memctlOnTerminal(nil, args...)
}

// memctlOnTerminal runs memctl as if stdin were a terminal giving in.
func (f *fixture) memctlOnTerminal(in io.Reader, args ...string) (int, string, string) {
	f.t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"--server", f.url, "--timeout", "3s", "--cache-dir", f.cache}, args...), streams{in: in, out: &out, err: &errb})
	return code, out.String(), errb.String()
}

// interest is how many subscriptions on the server would get a message
// published on subject.
func (f *fixture) interest(subject string) int {
	return f.srv.GlobalAccount().Interest(subject)
}

// subscribed waits until the server has more subscriptions for subject
// than before (a command started in the background subscribed): what is
// published on it from then on reaches the command, however late the
// command started.
func (f *fixture) subscribed(subject string, before int) {
	f.t.Helper()
	eventually(f.t, 10*time.Second, "a subscription on "+subject, func() bool { return f.interest(subject) > before })
}

// lockedBuffer is memctl's output, read by the test while memctl writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (f *fixture) ok(args ...string) string {
	f.t.Helper()
	code, out, errs := f.memctl(args...)
	if code != exitOK {
		f.t.Fatalf("memctl %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

func TestStatusAllocateFreeAndExitCodes(t *testing.T) {
	f := newFixture(t, 2)
	out := f.ok("status", "--all")
	for _, want := range []string{"n1-gpu0", "n1-gpu1", "Simulated GPU", "1 node, 2 devices", "normal", "0 B / 1.0 GiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("status --all lacks %q:\n%s", want, out)
		}
	}
	// The host's pinned memory, once per node.
	if strings.Count(out, "pinned host memory") != 1 || !strings.Contains(out, "n1 pinned host memory: 0 B held (0 B in use, 0 B cached; 0 B pinned at start; cap ") {
		t.Errorf("status --all should show n1's empty pinned pool once:\n%s", out)
	}
	// Two devices and no --device: alloc picks the one with the most
	// available memory and says so; free finds the allocation's device.
	out = f.ok("alloc", "1MiB")
	if !strings.Contains(out, "allocating on n1-gpu0 (the device with the most available memory") {
		t.Errorf("alloc without --device on two devices printed %q", out)
	}
	first := strings.Fields(strings.Split(out, "\n")[1])[0]
	if out := f.ok("free", first); !strings.Contains(out, "freed 1 allocation,") {
		t.Errorf("free without --device printed %q", out)
	}
	if code, _, errs := f.memctl("free", first); code != exitWorkerError || !strings.Contains(errs, "no device of the fleet holds") {
		t.Errorf("free of an id nobody holds: exit %d, %s", code, errs)
	}
	out = f.ok("-d", "n1-gpu0", "alloc", "900MiB", "--purpose", "kv", "--model", "m1")
	id := strings.Fields(out)[0]
	if !strings.Contains(out, "900 MiB on n1-gpu0") {
		t.Errorf("alloc printed %q", out)
	}
	out = f.ok("-d", "n1-gpu0", "status")
	if !strings.Contains(out, "warning") || !strings.Contains(out, "88%") {
		t.Errorf("status after 900 MiB of 1 GiB:\n%s", out)
	}
	if out := f.ok("-d", "n1-gpu0", "allocations"); !strings.Contains(out, id) || !strings.Contains(out, "1 of 1") {
		t.Errorf("allocations:\n%s", out)
	}
	if out := f.ok("allocations"); !strings.Contains(out, id) || !strings.Contains(out, "n1-gpu0") {
		t.Errorf("allocations of the whole fleet:\n%s", out)
	}
	if out := f.ok("-d", "n1-gpu0", "models"); !strings.Contains(out, "m1") {
		t.Errorf("models:\n%s", out)
	}
	var a subjects.Allocation
	if err := json.Unmarshal([]byte(f.ok("-d", "n1-gpu0", "--json", "alloc", "4KiB")), &a); err != nil || a.SizeBytes != 4096 {
		t.Errorf("alloc --json: %+v %v", a, err)
	}
	var lease subjects.Allocation
	if err := json.Unmarshal([]byte(f.ok("-d", "n1-gpu0", "--json", "alloc", "4KiB", "--ttl", "1m")), &lease); err != nil || lease.ExpiresAt == nil {
		t.Fatalf("alloc --ttl: %+v %v", lease, err)
	}
	if out := f.ok("-d", "n1-gpu0", "renew", lease.AllocationID, "--ttl", "5m"); !strings.Contains(out, lease.AllocationID+"  expires") {
		t.Errorf("renew printed %q", out)
	}
	var r subjects.Allocation
	if err := json.Unmarshal([]byte(f.ok("-d", "n1-gpu0", "--json", "alloc", "8MiB", "--type", "RESERVATION", "--pid", "99")), &r); err != nil || r.PID != 99 || r.AllocationType != subjects.Reservation {
		t.Errorf("alloc --type RESERVATION: %+v %v", r, err)
	}
	if code, _, errs := f.memctl("-d", "n1-gpu0", "alloc", "900MiB", "--wait", "200ms", "--ttl", "1m"); code != exitWorkerError || !strings.Contains(errs, "OUT_OF_MEMORY") || !strings.Contains(errs, "waited") {
		t.Errorf("alloc --wait past its deadline: exit %d, %s", code, errs)
	}
	f.ok("-d", "n1-gpu0", "free", lease.AllocationID, r.AllocationID)
	f.ok("-d", "n1-gpu0", "free", id, a.AllocationID)
	if code, _, errs := f.memctl("-d", "n1-gpu0", "free", id); code != exitWorkerError || !strings.Contains(errs, "ALLOCATION_NOT_FOUND") {
		t.Errorf("double free: exit %d, %s", code, errs)
	}
	if code, _, errs := f.memctl("-d", "nope-gpu0", "status"); code != exitUnreachable || !strings.Contains(errs, "no worker serves") || !strings.Contains(errs, "devices are n1-gpu0, n1-gpu1") {
		t.Errorf("unknown device: exit %d, %s", code, errs)
	}
	if code, _, _ := f.memctl("-d", "n1-gpu0", "alloc", "lots"); code != exitUsage {
		t.Errorf("bad size: exit %d, want %d", code, exitUsage)
	}
	var out2, errb bytes.Buffer
	if code := run(context.Background(), []string{"--server", "nats://127.0.0.1:1", "status"}, streams{out: &out2, err: &errb}); code != exitUnreachable {
		t.Errorf("unreachable server: exit %d, %s", code, errb.String())
	}
}

func TestReqRecsDefragAndTransfer(t *testing.T) {
	f := newFixture(t, 2)
	out := f.ok("req", "get_usage", "n1-gpu1", "{}")
	var reply subjects.Reply
	if err := json.Unmarshal([]byte(out), &reply); err != nil || !reply.Success {
		t.Errorf("req printed %q", out)
	}
	if code, out, _ := f.memctl("req", "allocate", "n1-gpu1", `{"size_bytes":-1}`); code != exitWorkerError || !strings.Contains(out, "INVALID_REQUEST") {
		t.Errorf("req with a bad request: exit %d, %s", code, out)
	}
	if out := f.ok("-d", "n1-gpu0", "recs"); !strings.Contains(out, "nothing to recommend") {
		t.Errorf("recs on an idle device: %q", out)
	}
	id := strings.Fields(f.ok("-d", "n1-gpu0", "alloc", "200MiB"))[0]
	out = f.ok("-d", "n1-gpu0", "transfer", id, "--to", "n1-gpu1", "--verify", "--follow")
	if !strings.Contains(out, "completed") || !strings.Contains(out, "200 MiB of 200 MiB") {
		t.Errorf("transfer --follow printed %q", out)
	}
	f.ok("-d", "n1-gpu0", "free", id)
	out = f.ok("-d", "n1-gpu0", "recs")
	if !strings.Contains(out, "release_cached") && !strings.Contains(out, "optimize") {
		t.Errorf("recs after freeing 200 MiB:\n%s", out)
	}
	if out := f.ok("-d", "n1-gpu0", "recs", "--apply", "1"); !strings.Contains(out, "sent optimize") {
		t.Errorf("recs --apply 1 printed %q", out)
	}
	if code, _, _ := f.memctl("-d", "n1-gpu0", "recs", "--apply", "9"); code != exitUsage {
		t.Errorf("recs --apply beyond the list: exit %d", code)
	}
	if out := f.ok("-d", "n1-gpu0", "defrag"); !strings.Contains(out, "fragmentation") {
		t.Errorf("defrag printed %q", out)
	}
	// On virtual memory (the sim's default) a freed block's memory goes
	// back with nothing moved, from the segment that stays.
	keep := strings.Fields(f.ok("-d", "n1-gpu0", "alloc", "64MiB"))[0]
	gone := strings.Fields(f.ok("-d", "n1-gpu0", "alloc", "64MiB"))[0]
	f.ok("-d", "n1-gpu0", "alloc", "64MiB")
	f.ok("-d", "n1-gpu0", "free", gone)
	if out := f.ok("-d", "n1-gpu0", "defrag"); !strings.Contains(out, "moved 0 blocks (0 B), released 64 MiB, fragmentation") {
		t.Errorf("defrag after freeing 64 MiB between two blocks printed %q", out)
	}
	f.ok("-d", "n1-gpu0", "free", keep)
	if out := f.ok("-d", "n1-gpu0", "optimize", "--dry-run"); !strings.Contains(out, "dry run: true") {
		t.Errorf("optimize printed %q", out)
	}
	if out := f.ok("-d", "n1-gpu1", "clear", "--force", "--yes"); !strings.Contains(out, "cleared 1 allocation ") {
		t.Errorf("clear printed %q", out)
	}
}

func TestWatchPrintsEventsAsJSONLines(t *testing.T) {
	f := newFixture(t, 1)
	before := f.interest(subjects.PressureEvents("n1-gpu0"))
	done := make(chan string)
	go func() {
		_, out, _ := f.memctl("watch", "--json", "--count", "2")
		done <- out
	}()
	f.subscribed(subjects.PressureEvents("n1-gpu0"), before) // watch sees what follows
	f.ok("alloc", "900MiB")                                  // warning
	f.ok("clear", "-y")                                      // normal again
	var out string
	select {
	case out = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not end after 2 events")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("watch printed %d lines: %q", len(lines), out)
	}
	var first, second watchLine
	_ = json.Unmarshal([]byte(lines[0]), &first)
	_ = json.Unmarshal([]byte(lines[1]), &second)
	if first.Level != subjects.LevelWarning || second.Level != subjects.LevelNormal || first.DeviceID != "n1-gpu0" {
		t.Errorf("events %+v then %+v", first, second)
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, streams{out: &out, err: &errb}); code != 0 || !strings.HasPrefix(out.String(), "memctl "+worker.Version) {
		t.Errorf("--version: exit %d, %q %q", code, out.String(), errb.String())
	}
}

// TestWatchStartsWithTheCurrentLevels: the table shows every device's level
// at once, before anything changes, then the change.
func TestWatchStartsWithTheCurrentLevels(t *testing.T) {
	f := newFixture(t, 2)
	var written lockedBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(context.Background(), []string{"--server", f.url, "--timeout", "3s", "--cache-dir", f.cache, "watch", "--count", "1"}, streams{out: &written, err: io.Discard})
	}()
	// Watch subscribes, then shows the levels it reads: once its first
	// table is out, it sees the change.
	eventually(t, 10*time.Second, "watch's first table", func() bool { return strings.Contains(written.String(), "└") })
	f.ok("-d", "n1-gpu1", "alloc", "900MiB")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not end after 1 event")
	}
	out := written.String()
	first, _, _ := strings.Cut(out, "└") // the first table
	if !strings.Contains(first, "n1-gpu0") || !strings.Contains(first, "n1-gpu1") || !strings.Contains(first, "current") {
		t.Errorf("the first table does not show both devices' current levels:\n%s", out)
	}
	if !strings.Contains(out, "warning") {
		t.Errorf("no change shown:\n%s", out)
	}
}

// TestShellCompletion: a shell asking (COMP_LINE) gets memctl's commands,
// and nothing else runs (no NATS needed).
func TestShellCompletion(t *testing.T) {
	t.Setenv("COMP_LINE", "memctl sta")
	var out bytes.Buffer
	if code := run(context.Background(), []string{}, streams{out: &out, err: io.Discard}); code != 0 || !strings.Contains(out.String(), "status") {
		t.Errorf("completion of %q: exit %d, %q", "memctl sta", code, out.String())
	}
}

func TestClearAsksFirst(t *testing.T) {
	f := newFixture(t, 1)
	f.ok("alloc", "100MiB", "--purpose", "cache")
	remaining := func() string {
		return f.ok("allocations")
	}
	for _, tc := range []struct {
		name   string
		in     io.Reader // nil: stdin is not a terminal
		args   []string
		code   int
		prompt bool
	}{
		{"no terminal and no --yes refuses", nil, nil, exitUsage, false},
		{"an empty answer is no", strings.NewReader("\n"), nil, exitUsage, true},
		{"n is no", strings.NewReader("n\n"), nil, exitUsage, true},
		{"--json does not skip the question", strings.NewReader("no\n"), []string{"--json"}, exitUsage, true},
	} {
		code, out, errs := f.memctlOnTerminal(tc.in, append([]string{"clear"}, tc.args...)...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", tc.name, code, tc.code, out, errs)
		}
		if got := strings.Contains(errs, "[y/N]"); got != tc.prompt {
			t.Errorf("%s: prompted %v, want %v: %q", tc.name, got, tc.prompt, errs)
		}
		if strings.Contains(out, "[y/N]") {
			t.Errorf("%s: the question went to stdout: %q", tc.name, out)
		}
		if !strings.Contains(remaining(), "cache") {
			t.Fatalf("%s: the allocation was freed without a yes", tc.name)
		}
	}
	if code, _, errs := f.memctl("clear"); !strings.Contains(errs, "--yes") {
		t.Errorf("refusal (exit %d) does not say --yes: %q", code, errs)
	}
	_, out, errs := f.memctlOnTerminal(strings.NewReader("y\n"), "clear")
	if !strings.Contains(errs, "(matching now: 1 allocation)") || !strings.Contains(out, "cleared 1 allocation ") {
		t.Errorf("yes: stdout %q stderr %q", out, errs)
	}
	if strings.Contains(remaining(), "cache") {
		t.Error("yes did not free the allocation")
	}
}

func TestTransferBarSpeaksBinaryUnits(t *testing.T) {
	f := newFixture(t, 2)
	id := strings.Fields(f.ok("-d", "n1-gpu0", "alloc", "300MiB"))[0]
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--server", f.url, "transfer", id, "--to", "n1-gpu1", "--follow"}, streams{out: &out, err: &errb, tty: true})
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
	}
	// The bar (a terminal) and the summary use one unit system.
	if !strings.Contains(out.String(), "300 MiB") || regexp.MustCompile(`[0-9.]+ ?[KMGT]B\b`).MatchString(out.String()) {
		t.Errorf("transfer --follow on a terminal printed decimal units or no size:\n%s", out.String())
	}
}

func TestAllocationDevicesAreRememberedNotTrusted(t *testing.T) {
	f := newFixture(t, 2)
	nc, err := nats.Connect(f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var fleetLookups atomic.Int32
	sub, err := nc.Subscribe("memory.get_allocations.all", func(*nats.Msg) { fleetLookups.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	cached := func() map[string]string {
		var c idCache
		b, _ := os.ReadFile(filepath.Join(f.cache, "ids.json"))
		_ = json.Unmarshal(b, &c)
		return c.Dev
	}

	// alloc remembers where it allocated; free asks that device, not the fleet.
	a := strings.Fields(f.ok("-d", "n1-gpu1", "alloc", "64MiB", "--ttl", "1m"))[0]
	if got := cached()[a]; got != "n1-gpu1" {
		t.Fatalf("after alloc the cache says %q holds %s", got, a)
	}
	f.ok("renew", a)
	f.ok("free", a)
	if n := fleetLookups.Load(); n != 0 {
		t.Errorf("renew and free of a remembered allocation made %d fleet lookups", n)
	}
	if _, ok := cached()[a]; ok {
		t.Error("a freed allocation stays in the cache")
	}

	// A wrong hint is checked and corrected by a fleet lookup.
	b := strings.Fields(f.ok("-d", "n1-gpu0", "alloc", "64MiB"))[0]
	c := loadIDCache(f.cache)
	c.put(b, "n1-gpu1")
	c.save()
	if out := f.ok("free", b); !strings.Contains(out, "freed 1 allocation") {
		t.Errorf("free with a stale hint: %q", out)
	}
	if n := fleetLookups.Load(); n != 1 {
		t.Errorf("a stale hint made %d fleet lookups, want 1", n)
	}

	// A cache folder that cannot be written costs nothing but the lookup.
	blocked := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	args := []string{"--server", f.url, "--cache-dir", filepath.Join(blocked, "sub"), "-d", "n1-gpu0", "alloc", "1MiB"}
	if code := run(context.Background(), args, streams{out: &out, err: &errb}); code != exitOK {
		t.Errorf("alloc with an unwritable cache: exit %d %s", code, errb.String())
	}
}

// /dev/null is a character device but not a terminal: clear must not ask
// a question there that nobody answers.
func TestDevNullIsNotATerminal(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("isTerminal(/dev/null) = true")
	}
}

// TestOffloadAndRestoreSayWhatMovedAndHowFast: offload moves a model to
// pinned host memory and prints the phases; restore brings it back.
func TestOffloadAndRestoreSayWhatMovedAndHowFast(t *testing.T) {
	f := newFixture(t, 1)
	f.ok("alloc", "64MiB", "--model", "llama")
	out := f.ok("offload")
	for _, want := range []string{"offload", "llama", "64 MiB in 1 allocation", "moved 64 MiB in ", "(copy ", "setup ", "release "} {
		if !strings.Contains(out, want) {
			t.Errorf("offload lacks %q:\n%s", want, out)
		}
	}
	if out := f.ok("models"); !strings.Contains(out, "64 MiB") {
		t.Errorf("models after offload:\n%s", out)
	}
	out = f.ok("restore", "--model", "llama")
	if !strings.Contains(out, "restore") || !strings.Contains(out, "moved 64 MiB") {
		t.Errorf("restore:\n%s", out)
	}
	if code, _, _ := f.memctl("restore", "--model", "nobody"); code != exitOK {
		t.Errorf("restore of a model with nothing offloaded: exit %d", code)
	}
}

// TestAHolderAndResize: alloc --holder vllm makes a holder with vLLM's
// sleep and wake URLs; resize changes a reservation's size.
func TestAHolderAndResize(t *testing.T) {
	f := newFixture(t, 1)
	out := f.ok("--json", "-d", "n1-gpu0", "alloc", "256MiB", "--type", "RESERVATION", "--holder", "vllm", "--holder-url", "http://127.0.0.1:8000", "--keep", "16MiB", "--priority", "-5")
	var a subjects.Allocation
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if a.Reclaim == nil || a.Reclaim.ReleaseURL != "http://127.0.0.1:8000/sleep?level=1" || a.Reclaim.RestoreURL != "http://127.0.0.1:8000/wake_up" ||
		a.Reclaim.KeepBytes != 16<<20 || a.Priority != -5 || a.ReclaimState != subjects.HolderHeld {
		t.Errorf("holder %+v", a)
	}
	if out := f.ok("resize", a.AllocationID, "128MiB"); !strings.Contains(out, "128 MiB") {
		t.Errorf("resize: %s", out)
	}
	// Growing past the room waits with --wait, and is granted when room comes.
	var filler subjects.Allocation
	if err := json.Unmarshal([]byte(f.ok("--json", "-d", "n1-gpu0", "alloc", "800MiB")), &filler); err != nil {
		t.Fatal(err)
	}
	grown := make(chan string, 1)
	go func() {
		_, out, errs := f.memctl("resize", a.AllocationID, "256MiB", "--wait", "5s")
		grown <- out + errs
	}()
	select {
	case out := <-grown:
		t.Fatalf("grown without room: %s", out)
	case <-time.After(300 * time.Millisecond):
	}
	f.ok("free", filler.AllocationID)
	if out := <-grown; !strings.Contains(out, "256 MiB") {
		t.Errorf("resize --wait: %s", out)
	}
	if code, _, errs := f.memctl("alloc", "1MiB", "--holder", "vllm"); code != exitUsage || !strings.Contains(errs, "--holder-url") {
		t.Errorf("--holder without its URL: exit %d, %s", code, errs)
	}
}

// TestReqAllIsForReads: a fleet request of an op that changes one device
// is bad usage, not "no worker".
func TestReqAllIsForReads(t *testing.T) {
	f := newFixture(t, 1)
	if code, _, errs := f.memctl("req", "allocate", "all", `{"size_bytes":1024}`); code != exitUsage || !strings.Contains(errs, "acts on one device") {
		t.Errorf("req allocate all: exit %d, %s", code, errs)
	}
	if out := f.ok("req", "get_usage", "all"); !strings.Contains(out, "n1-gpu0") {
		t.Errorf("req get_usage all: %s", out)
	}
}

// TestModelsAndRecsSpanTheFleet: without --device, models and recs answer
// for every device (they used to ask the user to pick one).
func TestModelsAndRecsSpanTheFleet(t *testing.T) {
	f := newFixture(t, 2)
	f.ok("-d", "n1-gpu1", "alloc", "64MiB", "--model", "llama")
	if out := f.ok("models"); !strings.Contains(out, "n1-gpu1") || !strings.Contains(out, "llama") {
		t.Errorf("models:\n%s", out)
	}
	out := f.ok("recs")
	for _, dev := range []string{"n1-gpu0", "n1-gpu1"} {
		if !strings.Contains(out, dev+":") {
			t.Errorf("recs says nothing of %s:\n%s", dev, out)
		}
	}
	var all map[string]subjects.ModelStatusReply
	if err := json.Unmarshal([]byte(f.ok("--json", "models")), &all); err != nil || len(all) != 2 || len(all["n1-gpu1"].Models) != 1 {
		t.Errorf("models --json: %v %+v", err, all)
	}
}

// TestATransferThatDoesNotFitSaysWhy: a copy to a device without room is
// refused in terms of the copy and the room (the pool's piece it could not
// map said "0 B free, 256 MiB asked").
func TestATransferThatDoesNotFitSaysWhy(t *testing.T) {
	f := newFixture(t, 2)
	id := strings.Fields(f.ok("-d", "n1-gpu1", "alloc", "512MiB"))[0]
	f.ok("-d", "n1-gpu0", "alloc", "700MiB")
	code, out, errs := f.memctl("-d", "n1-gpu1", "transfer", id, "--to", "n1-gpu0", "--follow")
	if code != exitWorkerError || !regexp.MustCompile(`a copy of 512 MiB \(\d+ bytes\) does not fit n1-gpu0: \d+ MiB \(\d+ bytes\) available`).MatchString(out+errs) {
		t.Errorf("exit %d\n%s%s", code, out, errs)
	}
}

// TestStatusShowsMemoryPinnedAhead: past warning, status says how much
// of the host's pinned memory waits for an offload of the device's models.
func TestStatusShowsMemoryPinnedAhead(t *testing.T) {
	f := newFixture(t, 1)
	f.ok("-d", "n1-gpu0", "alloc", "300MiB", "--model", "m")
	f.ok("-d", "n1-gpu0", "alloc", "620MiB")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out := f.ok("status")
		if strings.Contains(out, "cached, 300 MiB of it pinned ahead of an offload;") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status at warning does not show the model's 300 MiB pinned ahead:\n%s", out)
		}
	}
}
