package main

import (
	"bytes"
	"context"
	"github.com/memworker/memworker/contract"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// parse parses args as memworker does.
func parse(t *testing.T, args ...string) *cli {
	t.Helper()
	c := new(cli)
	k, err := kong.New(c, defaults(), kong.WithHyphenPrefixedParameters(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c
}

// testCLI is the flags of a test daemon: the defaults, on a free port, on
// the sim.
func testCLI(t *testing.T) *cli {
	return parse(t, "--port=-1", "--backend=sim", "--read-handlers=1", "--store-dir="+t.TempDir())
}

// TestAPortInUseFailsAtOnce: a second worker on a taken port says so with
// the system's error, at once.
func TestAPortInUseFailsAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := testCLI(t)
	c.Node, c.Port = "clash", l.Addr().(*net.TCPAddr).Port
	err = run(context.Background(), c, quiet())
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "--port") {
		t.Errorf("on a taken port: %v", err)
	}
}

// TestEventsAreKeptInTheStateFolder: without --store-dir, the embedded
// server keeps JetStream data in the per-user state folder, which outlives
// the worker.
func TestEventsAreKeptInTheStateFolder(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	for _, tc := range []struct {
		port   int
		folder bool
	}{{port, true}, {-1, false}} {
		c := testCLI(t)
		c.Node, c.StoreDir, c.Port = "state", "", tc.port
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		if err := run(ctx, c, quiet()); err != nil {
			t.Fatal(err)
		}
		cancel()
		_, err := os.Stat(filepath.Join(state, "memworker", strconv.Itoa(tc.port), "jetstream"))
		if (err == nil) != tc.folder {
			t.Errorf("--port %d: JetStream data in the state folder: %v, want %v (one folder per port; -1 a temporary one)", tc.port, err == nil, tc.folder)
		}
	}
}

// TestFlagDefaultsAreTheWorkersDefaults: with no flags the daemon runs the
// worker's DefaultConfig, stated once.
func TestFlagDefaultsAreTheWorkersDefaults(t *testing.T) {
	c := parse(t)
	c.Node = "n"
	got, want := config(c, nil), worker.DefaultConfig()
	want.Node = "n"
	if diff := cmp.Diff(want, got, cmpopts.IgnoreUnexported(worker.Config{})); diff != "" {
		t.Errorf("config from no flags (-want +got):\n%s", diff)
	}
}

// TestServesOnAnExistingServerAndStopsCleanly runs the daemon against a
// server, as --nats-url does, and stops it as SIGTERM would.
func TestServesOnAnExistingServerAndStopsCleanly(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	c := testCLI(t)
	c.NatsURL = srv.ClientURL()
	c.Node = "cmdtest"
	c.SimMemory = "1GiB"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, quiet()) }()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var u subjects.Usage
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg, err := nc.Request(subjects.Request(subjects.GetUsage, "cmdtest-gpu1"), nil, time.Second)
		if err == nil {
			if _, err := subjects.DecodeReply(msg.Data, &u); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from the daemon: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if u.TotalBytes != 1<<30 {
		t.Errorf("total %d, want the 1GiB of --sim-memory", u.TotalBytes)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v, want a clean stop", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop")
	}
}

func TestEmbeddedServerStartsAndStops(t *testing.T) {
	c := testCLI(t)
	c.Node = "embedded"
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := run(ctx, c, quiet()); err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestBadFlagsAreRefused(t *testing.T) {
	for name, mutate := range map[string]func(*cli){
		"memory":     func(c *cli) { c.SimMemory = "lots" },
		"devices":    func(c *cli) { c.SimDevices = 0 },
		"thresholds": func(c *cli) { c.WarningThreshold = 0.99 },
		"node":       func(c *cli) { c.Node = "bad.node" },
		"pinned":     func(c *cli) { c.PinnedPool = "lots" },
		"pinned max": func(c *cli) { c.PinnedMax = "-1GiB" },
		"vmm piece":  func(c *cli) { c.VMMPiece = "3MiB" },
		"vmm size":   func(c *cli) { c.VMMPiece = "lots" },
		"pinned over its cap": func(c *cli) {
			c.PinnedPool, c.PinnedMax = "2MiB", "1MiB"
		},
		"profiles with nowhere to serve them": func(c *cli) { c.Pprof = true },
	} {
		c := testCLI(t)
		c.NatsURL = "nats://127.0.0.1:1" // never reached
		mutate(c)
		if err := run(context.Background(), c, quiet()); err == nil {
			t.Errorf("%s: run accepted a bad flag", name)
		}
	}
}

// TestEmbeddedServerWithTenantAccounts starts the embedded server from
// docs/accounts.conf with a quota; a tenant's user allocates through its
// account's import.
func TestEmbeddedServerWithTenantAccounts(t *testing.T) {
	dir := t.TempDir()
	conf, err := os.ReadFile("../../docs/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	// The file says where to listen; --port, given, wins (a port free now).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()
	conf = bytes.ReplaceAll(conf, []byte(contract.AccountsStoreDir), []byte(filepath.Join(dir, "js")))
	path := filepath.Join(dir, "accounts.conf")
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	c := testCLI(t)
	c.Node, c.NatsConfig, c.User, c.Password = "acct", path, "worker", "change-me-worker"
	c.Port = l.Addr().(*net.TCPAddr).Port
	c.Quota = []string{"TEAM_A=1MiB"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, quiet()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	var nc *nats.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if nc, err = nats.Connect(url, nats.UserInfo("alice", "change-me-alice")); err == nil {
			if _, err = nc.Request(subjects.Request(subjects.GetUsage, "acct-gpu0"), nil, time.Second); err == nil {
				break
			}
			nc.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer through the tenant's import: %v", err)
		}
	}
	defer nc.Close()
	msg, err := nc.Request(subjects.Request(subjects.Allocate, "acct-gpu0"), []byte(`{"data":{"size_bytes":2097152}}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := subjects.DecodeReply(msg.Data, nil); err == nil || !strings.Contains(err.Error(), "QUOTA_EXCEEDED") {
		t.Errorf("2 MiB past a 1 MiB quota: %v", err)
	}
}

// TestEmbeddedServerFromAConfigFile starts the embedded server from the
// sample configuration with its users; the worker connects as its user.
func TestEmbeddedServerFromAConfigFile(t *testing.T) {
	dir := t.TempDir()
	conf, err := os.ReadFile("../../docs/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf = bytes.ReplaceAll(conf, []byte("listen: 127.0.0.1:4224"), []byte("listen: 127.0.0.1:-1"))
	conf = bytes.ReplaceAll(conf, []byte("/tmp/memworker-roles/jetstream"), []byte(filepath.Join(dir, "js")))
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	c := testCLI(t)
	c.Node = "conf"
	c.NatsConfig = path
	c.User, c.Password, c.InboxPrefix = "worker", "change-me-worker", "_INBOX_worker"
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := run(ctx, c, quiet()); err != nil {
		t.Fatalf("run with --nats-config: %v", err)
	}
	c.Password = "wrong"
	if err := run(context.Background(), c, quiet()); err == nil {
		t.Error("the worker connected with a wrong password")
	}
}

// TestVMMFlag: virtual memory is on by default; --vmm=false and --no-vmm
// turn it off (the sim models both).
func TestVMMFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--vmm"}, true},
		{[]string{"--vmm=false"}, false},
		{[]string{"--no-vmm"}, false},
	} {
		c := parse(t, append([]string{"--backend=sim"}, tc.args...)...)
		b, err := simBackend(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Granularity(0) > 0; got != tc.want {
			t.Errorf("%v: virtual memory %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestANegativePortParses: --port -1, as README and the port-clash error
// suggest, is a value, not a flag.
func TestANegativePortParses(t *testing.T) {
	if c := parse(t, "--port", "-1"); c.Port != -1 {
		t.Errorf("--port -1 parsed as %d", c.Port)
	}
}
