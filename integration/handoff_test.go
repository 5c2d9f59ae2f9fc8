package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// reclaimAsk is what a holder receives.
type reclaimAsk struct {
	RequestID string                 `json:"request_id"`
	Action    string                 `json:"action"`
	Data      subjects.ReclaimNotice `json:"data"`
}

// TestBrokeredHandoffOverNATS: a model server holding 800 MiB at priority
// 0 (a reservation with a reclaim subject) is asked to give memory back
// when a request of priority 10 waits; it shrinks to what it keeps and
// answers; the waiter is granted; what the holder gave up beyond the
// waiter's need is kept from a claim below it; when the waiter frees, the
// holder is asked to restore and holds its 800 MiB again. The events tell
// it as a timeline.
func TestBrokeredHandoffOverNATS(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.ReclaimTimeout = 5 * time.Second }))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	evs, err := nc.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	var holder subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 800 * MiB, AllocationType: subjects.Reservation,
		Reclaim: &subjects.Reclaim{Subject: "holders.model-a", KeepBytes: 100 * MiB}}, &holder)
	// The model server: on release it shrinks its reservation, on restore
	// it takes the memory again (the worker grew the reservation back).
	actions := make(chan string, 4)
	_, err = nc.Subscribe("holders.model-a", func(m *nats.Msg) {
		var ask reclaimAsk
		_ = json.Unmarshal(m.Data, &ask)
		actions <- ask.Action
		if ask.Action == subjects.ActionRelease {
			if ask.Data.AllocationID != holder.AllocationID || ask.Data.BytesWanted != 700*MiB {
				t.Errorf("release ask %+v", ask.Data)
			}
			var r subjects.Allocation
			body := mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": holder.AllocationID, "size_bytes": 100 * MiB}})
			msg, err := nc.Request(subjects.Request(subjects.Resize, dev), body, 5*time.Second)
			if err != nil {
				t.Errorf("resize: %v", err)
			} else if rr, _ := subjects.DecodeReply(msg.Data, &r); rr == nil || !rr.Success {
				t.Errorf("resize: %s", msg.Data)
			}
		}
		reply, _ := json.Marshal(subjects.Reply{Success: true, RequestID: ask.RequestID, Timestamp: time.Now().UTC()})
		_ = m.Respond(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w := pending(t, nc, subjects.Allocate, dev, waitBody(t, "b", 500*MiB, 30, 10))
	r, b := reply(t, w, 10*time.Second)
	if !r.Success {
		t.Fatalf("the waiter: %+v", r)
	}
	t.Logf("handoff: the waiter was granted %s after its request", time.Since(start))
	// The holder gave up 700 MiB for 500: the other 200 stay its own, and
	// only the 224 MiB free before the release are everyone's.
	body := mustJSON(t, map[string]any{"data": map[string]any{"size_bytes": 300 * MiB, "priority": -5}})
	if r := callErr(t, nc, subjects.Allocate, dev, body, subjects.CodeOutOfMemory); !strings.Contains(r.ErrorMessage, "owed to holders") {
		t.Errorf("300 MiB below the holder: %s", r.ErrorMessage)
	}
	var beside subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB, Priority: -5}, &beside)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: beside.AllocationID}, nil)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: b.AllocationID}, nil)
	deadline := time.After(5 * time.Second)
	for got := []string{}; len(got) < 2; {
		select {
		case a := <-actions:
			got = append(got, a)
		case <-deadline:
			t.Fatalf("the holder was asked %v, want release then restore", got)
		}
	}
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{AllocationIDs: []string{holder.AllocationID}}, &page)
	if len(page.Allocations) != 1 || page.Allocations[0].SizeBytes != 800*MiB || page.Allocations[0].ReclaimState != subjects.HolderHeld {
		t.Errorf("the holder after the restore: %+v", page.Allocations)
	}
	var timeline []string
	for len(timeline) < 3 {
		msg, err := evs.NextMsg(5 * time.Second)
		if err != nil {
			break
		}
		if typ, _, err := events.DecodeAllocation(msg); err == nil {
			timeline = append(timeline, typ)
		}
	}
	want := []string{events.TypeReclaimRequested, events.TypeReclaimCompleted, events.TypeReclaimRestored}
	if len(timeline) != 3 || timeline[0] != want[0] || timeline[1] != want[1] || timeline[2] != want[2] {
		t.Errorf("timeline %v, want %v", timeline, want)
	}
}

// TestAHolderThatDoesNotReleaseFails: a holder behind an HTTP URL that
// answers 200 but keeps its memory is not trusted: reclaim.failed
// (not_verified) at the deadline, and the waiter fails at its own.
func TestAHolderThatDoesNotReleaseFails(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	hits := make(chan string, 4)
	holderSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- r.URL.Path
	}))
	defer holderSrv.Close()
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.ReclaimTimeout = 300 * time.Millisecond }))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	evs, err := nc.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 800 * MiB, AllocationType: subjects.Reservation,
		Reclaim: &subjects.Reclaim{ReleaseURL: holderSrv.URL + "/sleep?level=1", RestoreURL: holderSrv.URL + "/wake_up"}}, nil)
	w := pending(t, nc, subjects.Allocate, dev, waitBody(t, "b", 500*MiB, 1, 10))
	if r, _ := reply(t, w, 5*time.Second); r.Success || r.ErrorCode != subjects.CodeOutOfMemory {
		t.Errorf("the waiter: %+v", r)
	}
	select {
	case p := <-hits:
		if p != "/sleep" {
			t.Errorf("the holder was asked at %s", p)
		}
	default:
		t.Error("the holder's release URL was not called")
	}
	var failed *events.Allocation
	for failed == nil {
		msg, err := evs.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal("no reclaim.failed event")
		}
		if typ, data, err := events.DecodeAllocation(msg); err == nil && typ == events.TypeReclaimFailed {
			failed = &data
		}
	}
	if failed.Reason != "not_verified" {
		t.Errorf("failed: %+v", failed)
	}
}

// TestATenantsHolderAcrossAccounts: through the generated accounts config,
// alice's holder listens in her account under holders.TEAM_A.; bob's
// waiter of higher priority gets her memory; she may name no other
// tenant's holder subject, and no URL.
func TestATenantsHolderAcrossAccounts(t *testing.T) {
	srv := startAccountsServer(t)
	startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB))
	alice := connectAs(t, srv, "alice", "change-me-alice")
	bob := connectAs(t, srv, "bob", "change-me-bob")
	dev := "n1-gpu0"
	callErr(t, alice, subjects.Allocate, dev, mustJSON(t, map[string]any{"data": map[string]any{"size_bytes": MiB, "allocation_type": "RESERVATION",
		"reclaim": map[string]any{"subject": "holders.TEAM_B.model"}}}), subjects.CodeForbidden)
	callErr(t, alice, subjects.Allocate, dev, mustJSON(t, map[string]any{"data": map[string]any{"size_bytes": MiB, "allocation_type": "RESERVATION",
		"reclaim": map[string]any{"release_url": "http://127.0.0.1:1/sleep"}}}), subjects.CodeForbidden)
	var holder subjects.Allocation
	call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 800 * MiB, AllocationType: subjects.Reservation,
		Reclaim: &subjects.Reclaim{Subject: "holders.TEAM_A.model"}}, &holder)
	released := make(chan struct{}, 1)
	if _, err := alice.Subscribe("holders.TEAM_A.model", func(m *nats.Msg) {
		defer func() { released <- struct{}{} }()
		body := mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": holder.AllocationID, "size_bytes": 0}})
		if msg, err := alice.Request(subjects.Request(subjects.Resize, dev), body, 5*time.Second); err != nil {
			t.Errorf("resize: %v", err)
		} else if r, _ := subjects.DecodeReply(msg.Data, nil); r == nil || !r.Success {
			t.Errorf("resize: %s", msg.Data)
		}
		_ = m.Respond([]byte(`{"success":true,"request_id":"x","timestamp":"2026-12-06T00:00:00Z"}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = alice.Flush()
	w := pending(t, bob, subjects.Allocate, dev, waitBody(t, "b", 500*MiB, 10, 10))
	if r, _ := reply(t, w, 10*time.Second); !r.Success {
		t.Errorf("bob's waiter: %+v", r)
	}
	<-released // the holder's own reply may come after bob's grant
}

// BenchmarkHandoff measures a brokered handoff on the sim: from a waiter's
// request to its grant, while a holder over NATS gives its memory back
// (its own reply included), and, beside it, the holder's time from the
// ask to its answer (run it with -benchtime 100x).
func BenchmarkHandoff(b *testing.B) {
	srv := startServer(b)
	nc := connect(b, srv)
	startWorker(b, srv, "n1", withDevices(1, GiB))
	dev := "n1-gpu0"
	var holder subjects.Allocation
	call(b, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 800 * MiB, AllocationType: subjects.Reservation,
		Reclaim: &subjects.Reclaim{Subject: "holders.bench"}}, &holder)
	resize := func(size int64) {
		body, _ := json.Marshal(map[string]any{"data": map[string]any{"allocation_id": holder.AllocationID, "size_bytes": size}})
		if _, err := nc.Request(subjects.Request(subjects.Resize, dev), body, 5*time.Second); err != nil {
			b.Error(err)
		}
	}
	var holderTime []time.Duration
	var mu sync.Mutex
	if _, err := nc.Subscribe("holders.bench", func(m *nats.Msg) {
		t0 := time.Now()
		var ask reclaimAsk
		_ = json.Unmarshal(m.Data, &ask)
		if ask.Action == subjects.ActionRelease {
			resize(0)
		}
		_ = m.Respond([]byte(`{"success":true,"request_id":"x","timestamp":"2026-12-06T00:00:00Z"}`))
		mu.Lock()
		holderTime = append(holderTime, time.Since(t0))
		mu.Unlock()
	}); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		var a subjects.Allocation
		body, _ := json.Marshal(map[string]any{"data": map[string]any{"size_bytes": 500 * MiB, "wait_seconds": 10, "ttl_seconds": 60, "priority": 10}})
		msg, err := nc.Request(subjects.Request(subjects.Allocate, dev), body, 15*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if r, _ := subjects.DecodeReply(msg.Data, &a); r == nil || !r.Success {
			b.Fatalf("waiter: %s", msg.Data)
		}
		lat = append(lat, time.Since(start))
		// The waiter leaves; the holder is restored (the worker grows its
		// reservation back) before the next round.
		call(b, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
		for {
			var page subjects.AllocationsReply
			call(b, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{AllocationIDs: []string{holder.AllocationID}}, &page)
			if len(page.Allocations) == 1 && page.Allocations[0].ReclaimState == subjects.HolderHeld {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	reportLatency(b, lat)
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(holderTime)
	if len(holderTime) > 0 {
		b.ReportMetric(float64(holderTime[len(holderTime)/2].Microseconds()), "holder-p50-µs")
	}
}
