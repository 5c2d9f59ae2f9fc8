package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestServerRestartMidLoad restarts the only NATS server while clients
// allocate and free, retrying with the same request_id: afterwards no
// allocation is lost or doubled and the ledger equals the backend.
func TestServerRestartMidLoad(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true}
	srv := serve(t, opts)
	port := srv.Addr().(*net.TCPAddr).Port // the restarted server listens here again
	url := srv.ClientURL()
	reconnecting := func() *nats.Conn {
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectBufSize(-1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	h := startWorkerOn(t, context.Background(), reconnecting(), "n1", withDevices(1, 4*GiB))
	cl := client.New(reconnecting())
	cl.Timeout = time.Second

	load := startRetryingLoad(t, cl, "n1-gpu0", 30, 2*MiB)
	time.Sleep(50 * time.Millisecond)
	srv.Shutdown()
	srv.WaitForShutdown()
	time.Sleep(100 * time.Millisecond)
	serve(t, &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	load.wait(t, cl)
	checkLedger(t, cl.Conn(), h, "n1-gpu0", 0)
}

// TestSoak runs a mixed load from many clients (MEMWORKER_SOAK sets how
// long; 3 s by default, minutes for a real soak), then stops everything:
// no goroutine may outlive it and the heap must return near its baseline.
func TestSoak(t *testing.T) {
	d := 3 * time.Second
	if v := os.Getenv("MEMWORKER_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	ignore := goleak.IgnoreCurrent()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	func() {
		srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
		srv.ReadyForConnections(5 * time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		wnc, _ := nats.Connect(srv.ClientURL())
		h := startWorkerOn(t, ctx, wnc, "soak", withDevices(2, 4*GiB))
		defer func() {
			cancel()
			h.wait()
			wnc.Close()
			if c, ok := h.dev.(interface{ Close() }); ok {
				c.Close() // the cuda backend's device threads
			}
		}()

		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		var ops, failures int64
		var mu sync.Mutex
		for c := 0; c < 16; c++ {
			wg.Go(func() {
				nc, err := nats.Connect(srv.ClientURL())
				if err != nil {
					t.Error(err)
					return
				}
				defer nc.Close()
				cl := client.New(nc)
				rng := rand.New(rand.NewPCG(uint64(c), 7))
				dev := fmt.Sprintf("soak-gpu%d", c%2)
				var mine []string
				for time.Now().Before(deadline) {
					var err error
					switch r := rng.IntN(10); {
					case r < 4:
						var a subjects.Allocation
						_, err = cl.Do(context.Background(), subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: rng.Int64N(64*MiB) + 1, TTLSeconds: float64(rng.IntN(3))}, &a)
						if err == nil {
							mine = append(mine, a.AllocationID)
						}
					case r < 7 && len(mine) > 0:
						_, err = cl.Do(context.Background(), subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: mine[0]}, nil)
						mine = mine[1:]
					case r == 7:
						_, err = cl.Do(context.Background(), subjects.GetStatus, dev, subjects.StatusRequest{IncludeAllocations: true}, nil)
					case r == 8:
						_, err = cl.Do(context.Background(), subjects.Defragment, dev, nil, nil)
					default:
						_, err = cl.Do(context.Background(), subjects.Optimize, dev, nil, nil)
					}
					mu.Lock()
					ops++
					if err != nil {
						failures++ // expired or out-of-memory allocations are expected
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		t.Logf("soak: %d operations in %v (%d error replies, expiries and OOM included)", ops, d, failures)
		// Let every ttl (at most 2 s) pass and the expiry loop run, so the
		// books are still while they are compared.
		time.Sleep(2100 * time.Millisecond)
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		for i := range 2 {
			checkLedger(t, nc, h, fmt.Sprintf("soak-gpu%d", i), i)
		}
	}()

	goleak.VerifyNone(t, ignore)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d bytes", grown)
	if grown > 32<<20 {
		t.Errorf("heap grew by %d bytes over the soak", grown)
	}
}

// TestRepliesFitTheMaxPayload runs a server with a 64 KiB max payload: a
// page that would not fit becomes a clear error instead of a dropped reply,
// and smaller pages work.
func TestRepliesFitTheMaxPayload(t *testing.T) {
	srv := serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, MaxPayload: 64 << 10})
	startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	ids := make([]string, 0, 300)
	for range 300 {
		var a subjects.Allocation
		call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 4096, Purpose: "a-purpose-to-make-it-longer"}, &a)
		ids = append(ids, a.AllocationID)
	}
	r := callErr(t, nc, subjects.GetAllocations, "n1-gpu0", []byte(`{"data":{"limit":1000}}`), subjects.CodeInvalidRequest)
	if !strings.Contains(r.ErrorMessage, "max payload") {
		t.Errorf("error %q does not explain the max payload", r.ErrorMessage)
	}
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, "n1-gpu0", subjects.AllocationsRequest{Limit: 50}, &page)
	if len(page.Allocations) != 50 || page.NextCursor == "" {
		t.Errorf("a 50-allocation page: %d, cursor %q", len(page.Allocations), page.NextCursor)
	}
	// get_status lists at most 100 allocations, so it fits.
	var st subjects.StatusReply
	call(t, nc, subjects.GetStatus, "n1-gpu0", subjects.StatusRequest{IncludeAllocations: true}, &st)
	if !st.AllocationsTruncated || len(st.Allocations) != subjects.MaxStatusAllocations {
		t.Errorf("status lists %d allocations (truncated %v)", len(st.Allocations), st.AllocationsTruncated)
	}
}

// TestAFloodDoesNotDropSubscriptions sends far more requests than the
// worker's endpoint holds (its pending limit, lowered here to 2,000) without
// reading the replies: the client library drops what is past the limit
// (the worker logs the slow consumer), and afterwards the flooded endpoint
// still serves.
func TestAFloodDoesNotDropSubscriptions(t *testing.T) {
	srv := startServer(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
		c.PendingRequests = 2000
		c.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	flood := connect(t, srv)
	for range 40_000 {
		if err := flood.PublishRequest(subjects.Request(subjects.GetStatus, "n1-gpu0"), "nobody.listens", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	_ = flood.Flush()
	nc := connect(t, srv)
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, err := nc.Request(subjects.Request(subjects.GetStatus, "n1-gpu0"), nil, 2*time.Second)
		if err == nil {
			if _, err := subjects.DecodeReply(msg.Data, nil); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker stopped serving after a flood: %v", err)
		}
	}
	for logged := ""; !strings.Contains(logged, "slow consumer"); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		logged = logs.String()
		mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("the flood never passed the endpoint's pending limit (no slow consumer logged):\n%s", logged)
		}
	}
}
