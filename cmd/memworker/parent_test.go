package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary be memworker itself (MEMWORKER_TEST_MAIN),
// so a test can run the real main as a child process.
func TestMain(m *testing.M) {
	if os.Getenv("MEMWORKER_TEST_MAIN") == "1" {
		os.Args = append([]string{"memworker"}, strings.Fields(os.Getenv("MEMWORKER_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestUnderGoRun(t *testing.T) {
	for exe, want := range map[string]bool{
		"/tmp/go-build2216/b001/exe/memworker":              true,
		"/root/.cache/go-build/32/326d068f33a5-d/memworker": true,
		"/root/.cache/go-build/32/326d068f33a5-a":           false, // a cached object, not an executable
		"/usr/local/bin/memworker":                          false,
		"/tmp/go-build2216/b001/memworker.test":             false,
		"/root/go/bin/memworker":                            false,
		"/tmp/go-build/not-really/exe/memworker-but-go-run": true,
	} {
		if got := underGoRun(exe); got != want {
			t.Errorf("underGoRun(%q) = %v, want %v", exe, got, want)
		}
	}
}

func TestStopWithParentCancelsWhenTheParentChanges(t *testing.T) {
	var ppid atomic.Int64
	ppid.Store(4242)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		stopWithParent(ctx, cancel, time.Millisecond, func() int { return int(ppid.Load()) }, slog.New(slog.DiscardHandler))
		close(done)
	}()
	select {
	case <-ctx.Done():
		t.Fatal("cancelled while the parent is alive")
	case <-time.After(20 * time.Millisecond):
	}
	ppid.Store(1) // reparented: the parent died
	<-done
	if ctx.Err() == nil {
		t.Error("the parent is gone and the context was not cancelled")
	}
}

// TestAnOrphanedGoRunWorkerStops runs memworker from a path like go run's,
// under a shell standing in for the go command, kills the shell with
// SIGKILL (what a shell's Ctrl-C can amount to for go run's child) and
// waits for the worker to stop on its own and free its port.
func TestAnOrphanedGoRunWorkerStops(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), ".cache", "go-build", "32", "326d068f33a5-d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "memworker")
	if err := os.Link(self, exe); err != nil {
		copyFile(t, self, exe)
	}
	port := freePort(t)
	sh := exec.Command("sh", "-c", `"$0" 2>"$1" & echo $!; wait`, exe, filepath.Join(t.TempDir(), "log"))
	sh.Env = append(os.Environ(), "MEMWORKER_TEST_MAIN=1",
		"MEMWORKER_TEST_ARGS=--port "+strconv.Itoa(port)+" --store-dir "+t.TempDir()+" --sim-devices 1")
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	worker, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("worker pid %q: %v", line, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(worker, syscall.SIGKILL) })
	waitListening(t, port, worker)

	if err := sh.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = sh.Wait()
	// A bound on liveness, not a timing check: the worker polls its parent
	// every 500 ms and drains in well under a second.
	for deadline := time.Now().Add(30 * time.Second); alive(worker); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker (pid %d) still runs 30 s after its parent died", worker)
		}
	}
	if !portFree(port) {
		t.Errorf("port %d still taken after the worker stopped", port)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// alive reports whether pid runs (a zombie no one reaps has stopped).
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z") && !strings.HasPrefix(after, "X")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// waitListening waits until something accepts on port, as long as the
// worker pid lives.
func waitListening(t *testing.T, port, pid int) {
	t.Helper()
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
			return
		}
		if !alive(pid) {
			t.Fatalf("the worker (pid %d) exited before it listened on %d", pid, port)
		}
		time.Sleep(20 * time.Millisecond) // the test's own timeout bounds this
	}
}
