package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
)

// TestMain lets a test run this binary as memctl itself (MEMCTL_MAIN=1),
// to kill it as a user's process would die.
func TestMain(m *testing.M) {
	if os.Getenv("MEMCTL_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// eventually polls cond every 20 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// readFile returns the trimmed text of path, "" while it does not exist.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func (f *fixture) listed(id string) bool {
	return strings.Contains(f.ok("-d", "n1-gpu0", "allocations"), id)
}

// TestRunHoldsAReservationForTheCommand: memctl run reserves, starts the
// command with the reservation in its environment and {size_bytes} in its
// arguments, exits with its status, and frees the reservation.
func TestRunHoldsAReservationForTheCommand(t *testing.T) {
	f := newFixture(t, 1)
	code, out, errs := f.memctl("-d", "n1-gpu0", "run", "--size", "64MiB", "--", "sh", "-c", `echo "$MEMWORKER_ALLOCATION_ID $MEMWORKER_SIZE_BYTES $CUDA_VISIBLE_DEVICES {size_bytes}"; exit 3`)
	if code != 3 {
		t.Fatalf("exit %d, want the command's 3\n%s%s", code, out, errs)
	}
	fields := strings.Fields(out)
	if len(fields) != 4 || fields[1] != "67108864" || fields[2] != "0" || fields[3] != "67108864" {
		t.Errorf("the command saw %q", out)
	}
	if !strings.Contains(errs, "memctl: 64 MiB reserved on n1-gpu0 ("+fields[0]+")") {
		t.Errorf("memctl does not say where it reserved: %q", errs)
	}
	if list := f.ok("-d", "n1-gpu0", "allocations"); strings.Contains(list, fields[0]) {
		t.Errorf("the reservation outlived the command:\n%s", list)
	}
}

// TestRunRelaysARelease: a command run with --holder signal at priority 0
// gets SIGUSR1 when a request of priority 10 waits for its memory; the
// memory is its child's (a model server's engine), and the waiter is
// granted only once the child has let go.
func TestRunRelaysARelease(t *testing.T) {
	f := newFixture(t, 1)
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	timeline := make(chan string, 1)
	before := f.interest(subjects.AllocationEvents("n1-gpu0", ""))
	go func() { _, out, _ := f.memctl("watch", "--allocations", "--count", "2"); timeline <- out }()
	f.subscribed(subjects.AllocationEvents("n1-gpu0", ""), before) // the timeline has it all
	dir := t.TempDir()
	engine, released, stop := filepath.Join(dir, "engine"), filepath.Join(dir, "released"), filepath.Join(dir, "stop")
	go func() {
		// The command starts its engine in a child and says its pid once
		// its trap is set: a release before that would kill it (SIGUSR1's
		// default), as it would a real server not ready yet.
		code, out, errs := f.memctl("-d", "n1-gpu0", "run", "--size", "900MiB", "--holder", "signal", "--",
			"sh", "-c", `trap 'touch `+released+`; kill $engine' USR1; sleep 60 & engine=$!; echo $engine > `+engine+`; while [ ! -e `+stop+` ]; do sleep 0.05; done`)
		done <- result{code, out, errs}
	}()
	eventually(t, 5*time.Second, "memctl run starting the command", func() bool { return readFile(engine) != "" })
	pid, err := strconv.Atoi(readFile(engine))
	if err != nil {
		t.Fatal(err)
	}
	f.backend.SetProcess(0, pid, 850<<20) // the engine, a grandchild of memctl's process
	eventually(t, 5*time.Second, "the engine's memory counted as the reservation's", func() bool {
		var page subjects.AllocationsReply
		if err := json.Unmarshal([]byte(f.ok("--json", "-d", "n1-gpu0", "allocations")), &page); err != nil {
			t.Fatal(err)
		}
		return len(page.Allocations) == 1 && page.Allocations[0].ObservedBytes == 850<<20
	})
	granted := make(chan string, 1)
	go func() {
		granted <- f.ok("-d", "n1-gpu0", "alloc", "512MiB", "--wait", "5s", "--ttl", "1m", "--priority", "10")
	}()
	eventually(t, 5*time.Second, "the command told to release", func() bool { return fileExists(released) })
	select {
	case out := <-granted:
		t.Fatalf("granted while the engine still held its memory: %s", out)
	case <-time.After(300 * time.Millisecond):
	}
	f.backend.SetProcess(0, pid, 0) // the engine let go
	t0 := time.Now()
	out := <-granted
	t.Logf("granted %s after the engine let go: %s", time.Since(t0), out)
	if !strings.Contains(out, "granted after waiting") {
		t.Errorf("the waiter: %s", out)
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code != 0 {
			t.Errorf("memctl run: exit %d\n%s%s", r.code, r.out, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the command did not end")
	}
	select {
	case out := <-timeline:
		if !regexp.MustCompile(`reclaim.requested .*priority 0 asked for 900 MiB by a waiter of priority 10`).MatchString(out) ||
			!regexp.MustCompile(`reclaim.completed .*released 900 MiB in [0-9.]+ s, verified [0-9.]+ s later`).MatchString(out) {
			t.Errorf("the timeline:\n%q", out)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch --allocations did not see the handoff")
	}
}

// TestRunRenewsTheLease: the reservation outlives its ttl while the
// command runs.
func TestRunRenewsTheLease(t *testing.T) {
	f := newFixture(t, 1)
	dir := t.TempDir()
	idFile, stop := filepath.Join(dir, "id"), filepath.Join(dir, "stop")
	done := make(chan int, 1)
	go func() {
		code, _, _ := f.memctl("-d", "n1-gpu0", "run", "--size", "64MiB", "--ttl", "1s", "--",
			"sh", "-c", `echo $MEMWORKER_ALLOCATION_ID > `+idFile+`; while [ ! -e `+stop+` ]; do sleep 0.05; done`)
		done <- code
	}()
	eventually(t, 5*time.Second, "the command started", func() bool { return readFile(idFile) != "" })
	id := readFile(idFile)
	time.Sleep(2500 * time.Millisecond) // past the ttl and an expiry pass
	if !f.listed(id) {
		t.Error("the reservation lapsed while its command ran")
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Errorf("exit %d", code)
	}
	if f.listed(id) {
		t.Error("the reservation outlived the command")
	}
}

// TestRunKilledLeavesTheLeaseToLapse: memctl killed (-9) cannot free the
// reservation; its lease lapses after the ttl, though the command lives on.
func TestRunKilledLeavesTheLeaseToLapse(t *testing.T) {
	f := newFixture(t, 1)
	idFile := filepath.Join(t.TempDir(), "id")
	c := exec.Command(os.Args[0], "--server", f.url, "--cache-dir", f.cache, "-d", "n1-gpu0", "run", "--size", "64MiB", "--ttl", "1s", "--",
		"sh", "-c", `echo $MEMWORKER_ALLOCATION_ID > `+idFile+`; exec sleep 60`)
	c.Env = append(os.Environ(), "MEMCTL_MAIN=1")
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL); _ = c.Wait() })
	eventually(t, 10*time.Second, "the command started", func() bool { return readFile(idFile) != "" })
	id := readFile(idFile)
	if !f.listed(id) {
		t.Fatal("the reservation is not there")
	}
	if err := c.Process.Kill(); err != nil { // memctl only: the command lives
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the lease lapsing", func() bool { return !f.listed(id) })
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
