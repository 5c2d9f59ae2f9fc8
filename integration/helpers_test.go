package integration

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device"
)

const (
	GiB = int64(1) << 30
	MiB = int64(1) << 20
)

// startServer starts an embedded nats-server on a random port for one test.
func startServer(t testing.TB) *server.Server {
	t.Helper()
	return serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
}

// startJetStreamServer starts one with JetStream, storing in a temp folder.
func startJetStreamServer(t testing.TB) *server.Server {
	t.Helper()
	return serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir()})
}

func serve(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	srv := natstest.Serve(t, opts)
	// Benchmarks go unobserved: validating every reply would take the
	// cores they measure.
	if _, bench := t.(*testing.B); !bench && opts.ServerName != unobserved && opts.Username == "" && opts.Authorization == "" && opts.Nkeys == nil && opts.Users == nil && opts.TrustedOperators == nil && !opts.TLSVerify && opts.ConfigFile == "" {
		observe(t, srv, nil)
	}
	return srv
}

func connect(t testing.TB, srv *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testBackend is what the tests need of a backend beyond worker.Backend:
// writing test patterns. backend_sim_test.go and backend_cuda_test.go
// (build tag cuda) provide one; the same tests run on both.
type testBackend interface {
	worker.Backend
	Write(ctx context.Context, at device.Location, p []byte) error
}

// faultInjector is the sim's fault injection; tests that need it skip on
// real GPUs.
type faultInjector interface {
	FailAllocs(dev, n int)
	SetUnavailable(dev int, unavailable bool)
	SetCopyDelay(d time.Duration)
}

// host is a worker on a test backend, serving on its own connection.
type host struct {
	*worker.Worker
	dev  testBackend
	node string
	done chan struct{}
	// truthMaxAge is how long what another process does may take to show
	// (worker.Config.TruthMaxAge).
	truthMaxAge time.Duration
}

// faults returns the backend's fault injection, or skips the test.
func (h *host) faults(t testing.TB) faultInjector {
	t.Helper()
	f, ok := h.dev.(faultInjector)
	if !ok {
		t.Skipf("the %s backend has no fault injection", h.dev.Name())
	}
	return f
}

// external makes another process use bytes of dev's memory, and waits
// until the worker would see it.
func (h *host) external(t testing.TB, dev int, bytes int64) {
	t.Helper()
	if err := setExternal(h.dev, dev, bytes); err != nil {
		t.Fatal(err)
	}
	time.Sleep(h.truthMaxAge)
}

// unavailable makes dev stop (or resume) answering, and waits until the
// worker would see it.
func (h *host) unavailable(t testing.TB, dev int, unavailable bool) {
	t.Helper()
	h.faults(t).SetUnavailable(dev, unavailable)
	time.Sleep(h.truthMaxAge)
}

type hostConfig struct {
	devices int
	bytes   int64
	noVMM   bool
	// standby: the worker stands by for the node; startWorkerOn does not
	// wait for it to serve.
	standby bool
	// runErr, when set, gets what the worker's Run returned, instead of
	// the test failing on an error.
	runErr chan error
}

// withRunErr sends what the worker's Run returns to ch.
func withRunErr(ch chan error) hostOpt {
	return func(_ *worker.Config, h *hostConfig) { h.runErr = ch }
}

// standingBy starts the worker as a standby of its node.
func standingBy() hostOpt {
	return func(c *worker.Config, h *hostConfig) { c.Standby, h.standby = true, true }
}

type hostOpt func(*worker.Config, *hostConfig)

func withDevices(n int, bytes int64) hostOpt {
	return func(_ *worker.Config, h *hostConfig) { h.devices, h.bytes = n, bytes }
}

// vmm reports whether the host's VRAM pools are on virtual memory.
func (h *host) vmm() bool {
	m, ok := h.dev.(interface{ Granularity(int) int64 })
	return ok && m.Granularity(0) > 0
}

// needsVMM skips a test of virtual memory on a backend without it.
func (h *host) needsVMM(t testing.TB) {
	if !h.vmm() {
		t.Skipf("the %s backend has no virtual memory management here", h.dev.Name())
	}
}

// withoutVMM turns the backend's virtual memory off (--vmm=false): VRAM
// pools take segments of their own, and compaction copies between them.
func withoutVMM() hostOpt {
	return func(_ *worker.Config, h *hostConfig) { h.noVMM = true }
}

func withConfig(f func(*worker.Config)) hostOpt {
	return func(c *worker.Config, _ *hostConfig) { f(c) }
}

// startWorker runs a worker for node on srv until the test ends.
func startWorker(t testing.TB, srv *server.Server, node string, opts ...hostOpt) *host {
	t.Helper()
	return startWorkerOn(t, context.Background(), connect(t, srv), node, opts...)
}

// startWorkerCtx runs a worker until ctx is done (or the test ends).
func startWorkerCtx(t testing.TB, ctx context.Context, srv *server.Server, node string, opts ...hostOpt) *host {
	t.Helper()
	return startWorkerOn(t, ctx, connect(t, srv), node, opts...)
}

// startWorkerOn runs a worker on the connection nc until ctx is done or
// the test ends.
func startWorkerOn(t testing.TB, ctx context.Context, nc *nats.Conn, node string, opts ...hostOpt) *host {
	t.Helper()
	hc := hostConfig{devices: 2, bytes: 16 * GiB}
	cfg := worker.DefaultConfig()
	cfg.Node = node
	cfg.ExpiryInterval = 20 * time.Millisecond
	cfg.DiscoveryWait = 50 * time.Millisecond
	cfg.Logger = testLogger(node)
	for _, o := range opts {
		o(&cfg, &hc)
	}
	b := newTestBackend(t, hc.devices, hc.bytes, !hc.noVMM)
	cfg.Backend = b
	ctx, cancel := context.WithCancel(ctx)
	w, err := worker.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := w.Run(ctx, nc)
		switch {
		case hc.runErr != nil:
			hc.runErr <- err
		case err != nil:
			t.Errorf("worker %s: %v", node, err)
		}
	}()
	h := &host{Worker: w, dev: b, node: node, done: done, truthMaxAge: cfg.TruthMaxAge}
	t.Cleanup(func() { cancel(); h.wait() })
	if hc.standby {
		return h
	}
	select {
	case <-w.Ready():
	case <-done:
		t.Fatalf("worker %s stopped before serving", node)
	case <-time.After(5 * time.Second):
		t.Fatal("worker not ready")
	}
	return h
}

// wait waits for the worker's Run to return.
func (h *host) wait() { <-h.done }

// request sends a raw body to op on dev and returns the reply message.
func request(t testing.TB, nc *nats.Conn, op subjects.Op, dev string, body []byte) *nats.Msg {
	t.Helper()
	msg, err := nc.Request(subjects.Request(op, dev), body, 20*time.Second)
	if err != nil {
		t.Fatalf("%s on %s: %v", op, dev, err)
	}
	return msg
}

// call sends data in an envelope and decodes a successful reply into out.
func call(t testing.TB, nc *nats.Conn, op subjects.Op, dev string, data, out any) *subjects.Reply {
	t.Helper()
	body, err := subjects.NewRequest("", op, data)
	if err != nil {
		t.Fatal(err)
	}
	msg := request(t, nc, op, dev, body)
	reply, err := subjects.DecodeReply(msg.Data, out)
	if err != nil {
		t.Fatalf("%s on %s: %v (body %s)", op, dev, err, msg.Data)
	}
	return reply
}

// callErr sends data and expects an error reply with code; it checks the
// envelope and micro's headers agree.
func callErr(t *testing.T, nc *nats.Conn, op subjects.Op, dev string, body []byte, code subjects.Code) *subjects.Reply {
	t.Helper()
	msg := request(t, nc, op, dev, body)
	var reply subjects.Reply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("error reply is not JSON: %q", msg.Data)
	}
	if reply.Success || reply.ErrorCode != code || reply.ErrorMessage == "" || reply.RequestID == "" || reply.Timestamp.IsZero() {
		t.Fatalf("%s: reply %s, want an error with code %s", op, msg.Data, code)
	}
	if got := msg.Header.Get("Nats-Service-Error-Code"); got != itoa(code.Status()) {
		t.Errorf("%s: Nats-Service-Error-Code %q, want %d", op, got, code.Status())
	}
	if msg.Header.Get("Nats-Service-Error") == "" {
		t.Errorf("%s: no Nats-Service-Error header", op)
	}
	return &reply
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLedger verifies the worker's books against the backend's truth: the
// pool reserves exactly the segments the sim holds, and usage agrees.
func checkLedger(t *testing.T, nc *nats.Conn, h *host, dev string, index int) subjects.Usage {
	t.Helper()
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, dev, nil, &u)
	if held := heldBytes(h.dev, index, device.VRAM); held != u.ReservedBytes {
		t.Fatalf("%s: worker reserves %d bytes, backend holds %d", dev, u.ReservedBytes, held)
	}
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{Limit: subjects.MaxPageLimit, AllocationType: subjects.VRAM}, &page)
	var sum int64
	for _, a := range page.Allocations {
		if !a.Offloaded {
			sum += a.ReservedBytes
		}
	}
	if page.NextCursor == "" && sum != u.AllocatedBytes {
		t.Fatalf("%s: allocations sum to %d bytes, usage says %d allocated", dev, sum, u.AllocatedBytes)
	}
	return u
}

// serviceInfo asks micro's discovery for the memory service's info (one
// worker answers).
func serviceInfo(t testing.TB, nc *nats.Conn) micro.Info {
	t.Helper()
	subject, err := micro.ControlSubject(micro.InfoVerb, worker.ServiceName, "")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subject, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// testLogger is a worker's logger: silent, unless MEMWORKER_TEST_LOG is set
// (then to stderr, each line naming the node), to see what a worker did in
// a test that failed.
func testLogger(node string) *slog.Logger {
	if os.Getenv("MEMWORKER_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test_node", node)
}
