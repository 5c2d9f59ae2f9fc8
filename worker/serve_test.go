package worker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
)

// serving runs a worker of one 1 GiB sim device on an embedded server with
// JetStream, changed by tweak, until the test ends; it returns a client
// connection and the worker.
func serving(t *testing.T, tweak func(*Config)) (*nats.Conn, *Worker) {
	t.Helper()
	return servingOn(t, natstest.JetStream(t), tweak)
}

// servingOn is serving on srv.
func servingOn(t *testing.T, srv *server.Server, tweak func(*Config)) (*nats.Conn, *Worker) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Node = "n"
	cfg.Backend = sim.New(sim.Default(1, 1<<30))
	cfg.DiscoveryWait = 10 * time.Millisecond
	cfg.ExpiryInterval, cfg.SampleInterval = 10*time.Millisecond, 10*time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Metrics = prometheus.NewRegistry()
	if tweak != nil {
		tweak(&cfg)
	}
	w, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, wc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("the worker stopped before serving: %v", err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, w
}

// ask sends body to op on the worker's device and decodes the reply's data
// into out (when given).
func ask(t *testing.T, nc *nats.Conn, op subjects.Op, body string, out any) subjects.Reply {
	t.Helper()
	msg, err := nc.Request(subjects.Request(op, "n-gpu0"), []byte(body), 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	var r subjects.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("%s: %s: %v", op, msg.Data, err)
	}
	if out != nil && r.Success {
		if err := json.Unmarshal(r.Data, out); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// TestEveryOperationIsServed walks the catalogue over NATS: each
// operation answers a good request with success and a bad one with its
// error code, and a fleet read answers for the node.
func TestEveryOperationIsServed(t *testing.T) {
	nc, w := serving(t, nil)
	var a subjects.Allocation
	if r := ask(t, nc, subjects.Allocate, `{"request_id":"a1","data":{"size_bytes":1048576,"model_id":"m","ttl_seconds":60}}`, &a); !r.Success {
		t.Fatalf("allocate: %+v", r)
	}
	id := a.AllocationID
	good := map[subjects.Op]string{
		subjects.GetStatus:        `{"data":{"include_allocations":true,"include_fragmentation":true}}`,
		subjects.GetUsage:         `{}`,
		subjects.GetAllocations:   `{"data":{"limit":10}}`,
		subjects.Allocate:         `{"request_id":"a1","data":{"size_bytes":1048576,"model_id":"m","ttl_seconds":60}}`, // a replay
		subjects.Renew:            `{"data":{"allocation_id":"` + id + `"}}`,
		subjects.Transfer:         `{"data":{"allocation_id":"` + id + `","target_allocation_type":"PINNED","mode":"copy"}}`,
		subjects.ModelStatus:      `{}`,
		subjects.ModelOptimize:    `{"data":{"optimization_type":"offload","target_usage_percentage":100}}`,
		subjects.GetPressure:      `{}`,
		subjects.Analytics:        `{"data":{"window_seconds":60}}`,
		subjects.OptimizationRecs: `{}`,
		subjects.Defragment:       `{}`,
		subjects.Optimize:         `{"data":{"dry_run":true}}`,
		subjects.Clear:            `{"data":{"purpose":"none-such","release_cached":false}}`,
		subjects.Deallocate:       `{"data":{"allocation_ids":[]}}`,
		subjects.Resize:           ``, // a reservation made below
	}
	const unknown = `{"data":{"allocation_id":"00000000-0000-0000-0000-000000000000"}}`
	bad := map[subjects.Op]struct {
		body string
		code subjects.Code
	}{
		subjects.Deallocate:  {unknown, subjects.CodeAllocationNotFound},
		subjects.Renew:       {unknown, subjects.CodeAllocationNotFound},
		subjects.Transfer:    {unknown, subjects.CodeAllocationNotFound},
		subjects.GetTransfer: {`{"data":{"transfer_id":"nope"}}`, subjects.CodeTransferNotFound},
		subjects.Allocate:    {`{"data":{"size_bytes":-1}}`, subjects.CodeInvalidRequest},
		subjects.Resize:      {`{"data":{"allocation_id":"00000000-0000-0000-0000-000000000000","size_bytes":1}}`, subjects.CodeAllocationNotFound},
		subjects.GetStatus:   {`{"action":"memory.get_usage"}`, subjects.CodeInvalidRequest},
	}
	for _, op := range subjects.Ops() {
		t.Run(string(op), func(t *testing.T) {
			body := good[op]
			if op == subjects.GetTransfer {
				// An allocation of its own: the transfer subtest's copy of
				// id may still run (a second one is CONFLICT).
				var own subjects.Allocation
				ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":4096}}`, &own)
				var st subjects.TransferStatus
				copyOwn := `{"data":{"allocation_id":"` + own.AllocationID + `","target_allocation_type":"PINNED","mode":"copy"}}`
				if r := ask(t, nc, subjects.Transfer, copyOwn, &st); !r.Success {
					t.Fatalf("the transfer to look at: %s %s", r.ErrorCode, r.ErrorMessage)
				}
				body = `{"data":{"transfer_id":"` + st.TransferID + `"}}`
			}
			if op == subjects.Resize {
				var r subjects.Allocation
				ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":4096,"allocation_type":"RESERVATION"}}`, &r)
				body = `{"data":{"allocation_id":"` + r.AllocationID + `","size_bytes":8192}}`
			}
			if op == subjects.Deallocate {
				var other subjects.Allocation
				ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":4096}}`, &other)
				body = `{"data":{"allocation_id":"` + other.AllocationID + `"}}`
			}
			if r := ask(t, nc, op, body, nil); !r.Success {
				t.Errorf("%s %s: %s %s", op, body, r.ErrorCode, r.ErrorMessage)
			}
			if b, ok := bad[op]; ok {
				if r := ask(t, nc, op, b.body, nil); r.ErrorCode != b.code {
					t.Errorf("%s %s: %s, want %s", op, b.body, r.ErrorCode, b.code)
				}
			}
		})
	}
	// The fleet answers for the node.
	msg, err := nc.Request(subjects.FleetRequest(subjects.GetUsage), []byte(`{}`), 5*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"node":"n"`) {
		t.Errorf("fleet get_usage: %v %s", err, msg.Data)
	}
	if err := w.Check(context.Background()); err != nil {
		t.Errorf("Check: %v", err)
	}
	if n := testutil.CollectAndCount(w.metrics.requests); n == 0 {
		t.Error("no requests counted")
	}
}

// TestWaitersOverNATS: a waiting allocate is answered when room comes, a
// retry joins it, and the worker's stop answers the rest.
func TestWaitersOverNATS(t *testing.T) {
	nc, _ := serving(t, nil)
	var big subjects.Allocation
	ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":1000000000}}`, &big)
	sub := func(body string) chan *nats.Msg {
		ch := make(chan *nats.Msg, 1)
		inbox := nats.NewInbox()
		s, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Unsubscribe() })
		if err := nc.PublishRequest(subjects.Request(subjects.Allocate, "n-gpu0"), inbox, []byte(body)); err != nil {
			t.Fatal(err)
		}
		return ch
	}
	body := `{"request_id":"w","data":{"size_bytes":268435456,"wait_seconds":30,"ttl_seconds":60}}`
	first, retry := sub(body), sub(body)
	for {
		var u subjects.Usage
		ask(t, nc, subjects.GetUsage, `{}`, &u)
		if u.WaitingRequests == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	ask(t, nc, subjects.Deallocate, `{"data":{"allocation_id":"`+big.AllocationID+`"}}`, nil)
	var ids []string
	for _, ch := range []chan *nats.Msg{first, retry} {
		select {
		case msg := <-ch:
			var a subjects.Allocation
			r, _ := subjects.DecodeReply(msg.Data, &a)
			if r == nil || !r.Success {
				t.Fatalf("a waiter: %s", msg.Data)
			}
			ids = append(ids, a.AllocationID)
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter got no reply")
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("the retry got %s, the first %s", ids[1], ids[0])
	}
	// A replay after the grant is answered from the cache.
	var again subjects.Allocation
	ask(t, nc, subjects.Allocate, body, &again)
	if again.AllocationID != ids[0] {
		t.Errorf("a replay got %s, want %s", again.AllocationID, ids[0])
	}
}

// TestHandoffAndLeasesOverNATS: a holder over NATS and one over HTTP are
// asked to release for a waiter of higher priority; the NATS one frees
// its allocation and is verified, the waiter granted, its lease expiry
// announced in a batch; a standby for the node waits while the worker
// serves.
func TestHandoffAndLeasesOverNATS(t *testing.T) {
	nc, w := serving(t, func(c *Config) { c.ReclaimTimeout = 2 * time.Second })
	var httpAsked atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		httpAsked.Add(1)
		rw.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer hs.Close()
	var h1, h2 subjects.Allocation
	ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":419430400,"priority":-1,"reclaim":{"subject":"holder.one"}}}`, &h1)
	ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":419430400,"priority":-2,"reclaim":{"release_url":"`+hs.URL+`/sleep"}}}`, &h2)
	evs, err := nc.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("holder.one", func(m *nats.Msg) {
		ask(t, nc, subjects.Deallocate, `{"data":{"allocation_id":"`+h1.AllocationID+`"}}`, nil)
		_ = m.Respond([]byte(`{"success":true,"request_id":"x","timestamp":"2026-12-06T00:00:00Z"}`))
	}); err != nil {
		t.Fatal(err)
	}
	var granted subjects.Allocation
	if r := ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":629145600,"wait_seconds":10,"ttl_seconds":0.3,"priority":5}}`, &granted); !r.Success {
		t.Fatalf("the waiter: %+v", r)
	}
	seen := map[string]bool{}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !seen["io.memworker.allocation.expired.v1"]; {
		msg, err := evs.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var e struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(msg.Data, &e)
		seen[e.Type] = true
	}
	if httpAsked.Load() == 0 {
		t.Error("the HTTP holder, of the lowest priority, was not asked first")
	}
	for _, want := range []string{"io.memworker.reclaim.requested.v1", "io.memworker.reclaim.failed.v1", "io.memworker.reclaim.completed.v1", "io.memworker.allocation.expired.v1"} {
		if !seen[want] {
			t.Errorf("no %s event; saw %v", want, seen)
		}
	}
	// A standby for the node stands by while this worker serves.
	cfg := DefaultConfig()
	cfg.Node, cfg.Standby, cfg.Backend = "n", true, sim.New(sim.Default(1, 1<<30))
	cfg.DiscoveryWait, cfg.Logger = 10*time.Millisecond, slog.New(slog.DiscardHandler)
	standby, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := standby.Run(ctx, nc); err != nil {
		t.Errorf("a standby stopped while standing by: %v", err)
	}
	select {
	case <-standby.Ready():
		t.Error("the standby served while the worker lives")
	default:
	}
	if err := w.Check(context.Background()); err != nil {
		t.Errorf("the worker after the handoff: %v", err)
	}
}
