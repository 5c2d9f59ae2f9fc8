package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

func TestAllocateDescribesTheAllocation(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	dev := "n1-gpu0"

	before := time.Now().UTC()
	var a subjects.Allocation
	reply := call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{
		SizeBytes: 1000, Purpose: "kv_cache", ModelID: "llama-70b", Persistent: true, TTLSeconds: 3600,
	}, &a)
	if reply.RequestID == "" || reply.Timestamp.Location() != time.UTC {
		t.Errorf("envelope %+v: want a generated request_id and a UTC timestamp", reply)
	}
	if a.AllocationID == "" || a.DeviceID != dev || a.SizeBytes != 1000 || a.ReservedBytes != 1024 ||
		a.AllocationType != subjects.VRAM || a.Purpose != "kv_cache" || a.ModelID != "llama-70b" || !a.Persistent {
		t.Errorf("allocation %+v", a)
	}
	if a.CreatedAt.Before(before.Add(-time.Second)) || a.ExpiresAt == nil ||
		a.ExpiresAt.Sub(a.CreatedAt) != time.Hour {
		t.Errorf("created_at %v expires_at %v: want now and an hour later", a.CreatedAt, a.ExpiresAt)
	}
	u := checkLedger(t, nc, h, dev, 0)
	if u.AllocatedBytes != 1024 || u.RequestedBytes != 1000 || u.ReservedBytes != 2*MiB || u.Allocations != 1 {
		t.Errorf("usage %+v: want 1024 allocated of one 2 MiB segment", u)
	}
	if len(u.ByPurpose) != 1 || u.ByPurpose[0] != (subjects.PurposeUsage{Purpose: "kv_cache", Allocations: 1, AllocatedBytes: 1024}) {
		t.Errorf("by purpose %+v", u.ByPurpose)
	}
}

func TestCoreOperationsEndToEnd(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, 4*GiB))
	nc := connect(t, srv)
	dev := "n1-gpu1"

	var big, small, pinned subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 3 * GiB, Purpose: "weights", ModelID: "m1", Persistent: true}, &big)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 64 * MiB, Purpose: "activations", ModelID: "m1", Alignment: 1 << 20}, &small)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 8 * MiB, AllocationType: "pinned"}, &pinned)
	if pinned.AllocationType != subjects.Pinned {
		t.Errorf("allocation type %q, want PINNED (normalised)", pinned.AllocationType)
	}

	var st subjects.StatusReply
	call(t, nc, subjects.GetStatus, dev, subjects.StatusRequest{IncludeAllocations: true, IncludeFragmentation: true}, &st)
	if st.Device.DeviceID != dev || st.Device.Node != "n1" || st.Device.Index != 1 || st.Device.Backend != h.dev.Name() || st.Device.TotalBytes != 4*GiB {
		t.Errorf("device %+v", st.Device)
	}
	if st.AllocationCount != 3 || len(st.Allocations) != 3 || st.UsageStats == nil || st.Fragmentation == nil {
		t.Errorf("status: %d allocations listed of %d, stats %v, fragmentation %v", len(st.Allocations), st.AllocationCount, st.UsageStats, st.Fragmentation)
	}
	// Two segments of their own, or, on virtual memory, one growing.
	segments := 2
	if h.vmm() {
		segments = 1
	}
	if st.UsageStats != nil && (st.UsageStats.AllocRequests != 2 || st.UsageStats.Segments != segments || st.UsageStats.CacheHits != 0) {
		t.Errorf("pool stats %+v: want 2 VRAM requests in %d segments", st.UsageStats, segments)
	}
	wantUsed := 3*GiB + 64*MiB
	if st.Usage.UsedBytes != wantUsed || st.Usage.PinnedHostBytes != 20*MiB {
		t.Errorf("usage %+v: want %d used and a 20 MiB pinned segment", st.Usage, wantUsed)
	}

	var p subjects.Pressure
	call(t, nc, subjects.GetPressure, dev, nil, &p)
	ratio := float64(wantUsed) / float64(4*GiB)
	if p.Level != subjects.LevelNormal || p.UsageRatio != ratio || p.WarningThreshold != 0.85 || p.CriticalThreshold != 0.95 {
		t.Errorf("pressure %+v: want normal at %v", p, ratio)
	}

	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{ModelID: "m1"}, &page)
	if page.TotalCount != 2 || page.Allocations[0].AllocationID != big.AllocationID {
		t.Errorf("allocations of m1: %+v", page)
	}

	var freed subjects.DeallocateReply
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: small.AllocationID}, &freed)
	if len(freed.DeallocatedIDs) != 1 || freed.FreedBytes != 64*MiB {
		t.Errorf("deallocate: %+v", freed)
	}
	// Freed memory stays cached in the pool until clear releases it.
	u := checkLedger(t, nc, h, dev, 1)
	if u.CachedBytes != 64*MiB {
		t.Errorf("cached %d, want the freed 64 MiB", u.CachedBytes)
	}

	var cl subjects.ClearReply
	call(t, nc, subjects.Clear, dev, subjects.ClearRequest{}, &cl)
	// The pinned segment goes back to the host's pinned pool, page-locked
	// for the next offload: clear releases device memory only.
	if cl.ClearedAllocations != 1 || cl.SkippedPersistent != 1 || cl.ReleasedBytes != 64*MiB {
		t.Errorf("clear: %+v: want the pinned allocation cleared, the persistent one kept, 64 MiB released", cl)
	}
	if u = checkLedger(t, nc, h, dev, 1); u.PinnedHostBytes != 0 || u.PinnedPool == nil || u.PinnedPool.CachedBytes != 20*MiB || u.PinnedPool.InUseBytes != 0 {
		t.Errorf("after clear: device pinned %d, pinned pool %+v: want the 20 MiB segment cached in the host's pool", u.PinnedHostBytes, u.PinnedPool)
	}
	call(t, nc, subjects.Clear, dev, subjects.ClearRequest{Force: true}, &cl)
	if cl.ClearedAllocations != 1 || cl.ReleasedBytes != 3*GiB {
		t.Errorf("forced clear: %+v", cl)
	}
	u = checkLedger(t, nc, h, dev, 1)
	if u.UsedBytes != 0 || u.ReservedBytes != 0 || u.Allocations != 0 {
		t.Errorf("after clearing everything: %+v", u)
	}
}

func TestExpiredAllocationsAreFreed(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	var short, long subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.05}, &short)
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 600}, &long)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var page subjects.AllocationsReply
		call(t, nc, subjects.GetAllocations, "n1-gpu0", nil, &page)
		if page.TotalCount == 1 && page.Allocations[0].AllocationID == long.AllocationID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocation with a 50 ms ttl still listed after 5 s: %+v", page)
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkLedger(t, nc, h, "n1-gpu0", 0)
	callErr(t, nc, subjects.Deallocate, "n1-gpu0", mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": short.AllocationID}}), subjects.CodeAllocationNotFound)
}

func TestGetAllocationsPaginates(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1")
	nc := connect(t, srv)
	var ids []string
	for i := 0; i < 25; i++ {
		var a subjects.Allocation
		purpose := "a"
		if i%5 == 0 {
			purpose = "b"
		}
		call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 4096, Purpose: purpose}, &a)
		ids = append(ids, a.AllocationID)
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		var page subjects.AllocationsReply
		call(t, nc, subjects.GetAllocations, "n1-gpu0", subjects.AllocationsRequest{Limit: 10, Cursor: cursor}, &page)
		if page.TotalCount != 25 {
			t.Fatalf("total %d, want 25", page.TotalCount)
		}
		for _, a := range page.Allocations {
			got = append(got, a.AllocationID)
		}
		if page.NextCursor == "" {
			if pages != 2 {
				t.Errorf("%d pages, want 3", pages+1)
			}
			break
		}
		cursor = page.NextCursor
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("pages list %v, want creation order %v", got, ids)
	}
	var b subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, "n1-gpu0", subjects.AllocationsRequest{Purpose: "b"}, &b)
	if b.TotalCount != 5 || b.NextCursor != "" {
		t.Errorf("purpose filter: %d allocations, want 5", b.TotalCount)
	}
}

func TestRequestKeysInAnyCase(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1")
	nc := connect(t, srv)
	bodies := map[string]string{
		"PascalCase": `{"RequestId":"PascalCase","Action":"memory.allocate","Data":{"DeviceId":"n1-gpu0","SizeBytes":4096,"AllocationType":"VRAM","ModelId":"m","TtlSeconds":60}}`,
		"camelCase":  `{"requestId":"camelCase","action":"memory.allocate","data":{"deviceId":"n1-gpu0","sizeBytes":4096,"allocationType":"VRAM","modelId":"m","ttlSeconds":60}}`,
		"snake_case": `{"request_id":"snake_case","action":"memory.allocate","data":{"device_id":"n1-gpu0","size_bytes":4096,"allocation_type":"VRAM","model_id":"m","ttl_seconds":60}}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			msg := request(t, nc, subjects.Allocate, "n1-gpu0", []byte(body))
			var a subjects.Allocation
			reply, err := subjects.DecodeReply(msg.Data, &a)
			if err != nil {
				t.Fatal(err)
			}
			if reply.RequestID != name {
				t.Errorf("request_id %q not echoed", reply.RequestID)
			}
			if a.SizeBytes != 4096 || a.ModelID != "m" || a.ExpiresAt == nil {
				t.Errorf("allocation %+v", a)
			}
			// Replies are always snake_case.
			var raw map[string]json.RawMessage
			_ = json.Unmarshal(msg.Data, &raw)
			if _, ok := raw["request_id"]; !ok {
				t.Errorf("reply keys are not snake_case: %s", msg.Data)
			}
		})
	}
}

func TestMutationsAreIdempotentByRequestID(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	body := []byte(`{"request_id":"retry-1","data":{"size_bytes":1048576}}`)
	first := request(t, nc, subjects.Allocate, "n1-gpu0", body)
	second := request(t, nc, subjects.Allocate, "n1-gpu0", body)
	if string(first.Data) != string(second.Data) {
		t.Errorf("retry got a different reply:\n%s\n%s", first.Data, second.Data)
	}
	u := checkLedger(t, nc, h, "n1-gpu0", 0)
	if u.Allocations != 1 {
		t.Errorf("%d allocations after a retried allocate, want 1", u.Allocations)
	}
	// The same id for another payload is a conflict and changes nothing.
	callErr(t, nc, subjects.Allocate, "n1-gpu0", []byte(`{"request_id":"retry-1","data":{"size_bytes":2097152}}`), subjects.CodeConflict)
	callErr(t, nc, subjects.Clear, "n1-gpu0", []byte(`{"request_id":"retry-1","data":{}}`), subjects.CodeConflict)
	if u2 := checkLedger(t, nc, h, "n1-gpu0", 0); u2.Allocations != 1 {
		t.Errorf("conflicting request changed the ledger: %d allocations", u2.Allocations)
	}
	// Reads are not cached.
	var a, b subjects.Usage
	r1 := call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &a)
	r2 := call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &b)
	if r1.RequestID == r2.RequestID {
		t.Errorf("two requests without ids got the same generated id")
	}
}

// TestAnAllocateRetryNeverAllocatesTwice: a retry of an allocate whose
// reply the cache has long dropped (more newer mutations than it keeps)
// gets the same allocation, not a second one; a retry respelled is the
// same request.
func TestAnAllocateRetryNeverAllocatesTwice(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withConfig(func(c *worker.Config) { c.IdempotencyEntries = 10 }))
	nc := connect(t, srv)
	body := []byte(`{"request_id":"late-retry","data":{"size_bytes":1048576,"purpose":"p"}}`)
	var first subjects.Allocation
	if _, err := subjects.DecodeReply(request(t, nc, subjects.Allocate, "n1-gpu0", body).Data, &first); err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		other, _ := subjects.NewRequest(fmt.Sprint("other-", i), subjects.Allocate, subjects.AllocateRequest{SizeBytes: 4096})
		if _, err := subjects.DecodeReply(request(t, nc, subjects.Allocate, "n1-gpu0", other).Data, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, retry := range []string{string(body), `{"Data":{"Purpose":"p","SizeBytes":1048576},"RequestId":"late-retry"}`} {
		var again subjects.Allocation
		if _, err := subjects.DecodeReply(request(t, nc, subjects.Allocate, "n1-gpu0", []byte(retry)).Data, &again); err != nil {
			t.Fatalf("retry %s: %v", retry, err)
		}
		if again.AllocationID != first.AllocationID {
			t.Errorf("retry %s allocated %s, want the first allocation %s", retry, again.AllocationID, first.AllocationID)
		}
	}
	callErr(t, nc, subjects.Allocate, "n1-gpu0", []byte(`{"request_id":"late-retry","data":{"size_bytes":2097152}}`), subjects.CodeConflict)
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, "n1-gpu0", subjects.AllocationsRequest{Purpose: "p"}, &page)
	if page.TotalCount != 1 {
		t.Errorf("%d allocations of the retried request, want 1", page.TotalCount)
	}
	checkLedger(t, nc, h, "n1-gpu0", 0)
}

func TestRequestsWithoutReplySubjectDoNothing(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	if err := nc.Publish(subjects.Request(subjects.Allocate, "n1-gpu0"), []byte(`{"data":{"size_bytes":1048576}}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	time.Sleep(50 * time.Millisecond)
	if u := checkLedger(t, nc, h, "n1-gpu0", 0); u.Allocations != 0 {
		t.Errorf("a published allocate without reply subject allocated %d", u.Allocations)
	}
}

// TestRepliesNeverGoToTheWorkersOwnSubjects: a request whose reply subject
// is one of the worker's event subjects (or a $ API) is dropped, not
// answered there: a client cannot make the worker publish a forged event.
func TestRepliesNeverGoToTheWorkersOwnSubjects(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	watch, err := nc.SubscribeSync("memory.>")
	if err != nil {
		t.Fatal(err)
	}
	forged := []string{subjects.PressureEvents("n1-gpu0"), subjects.LifecycleEvents("n1"), "$JS.API.STREAM.CREATE.X"}
	for _, reply := range forged {
		if err := nc.PublishRequest(subjects.Request(subjects.Allocate, "n1-gpu0"), reply, []byte(`{"data":{"size_bytes":1048576}}`)); err != nil {
			t.Fatal(err)
		}
	}
	// An allocate after them on the same endpoint, answered, shows the
	// worker has handled them.
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 4096}, nil)
	for {
		msg, err := watch.NextMsg(100 * time.Millisecond)
		if err != nil {
			break
		}
		// The worker's own events are fine there; a reply envelope is not.
		var envelope struct {
			RequestID *string `json:"request_id"`
		}
		for _, reply := range forged {
			if msg.Subject == reply && json.Unmarshal(msg.Data, &envelope) == nil && envelope.RequestID != nil {
				t.Errorf("the worker replied on %s: %s", reply, msg.Data)
			}
		}
	}
	if u := checkLedger(t, nc, h, "n1-gpu0", 0); u.Allocations != 1 {
		t.Errorf("%d allocations, want only the answered one", u.Allocations)
	}
}

func TestMicroDiscoveryListsEveryEndpoint(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1")
	info := serviceInfo(t, connect(t, srv))
	if info.Name != "memory" || info.Metadata["node"] != "n1" {
		t.Errorf("service %s metadata %v", info.Name, info.Metadata)
	}
	served := map[string]bool{}
	for _, e := range info.Endpoints {
		wantGroup := subjects.QueueGroup(e.Metadata["device_id"])
		if e.Metadata["device_id"] == subjects.Fleet {
			wantGroup = subjects.NodeQueueGroup("n1")
		}
		if e.QueueGroup != wantGroup {
			t.Errorf("endpoint %s in queue group %q, want %q", e.Subject, e.QueueGroup, wantGroup)
		}
		if e.Subject != subjects.Request(subjects.Op(e.Metadata["op"]), e.Metadata["device_id"]) {
			t.Errorf("endpoint %s has metadata %v", e.Subject, e.Metadata)
		}
		// nats micro info memory points at the schemas of the contract.
		for _, key := range []string{"request_schema", "reply_schema"} {
			name, ok := strings.CutPrefix(e.Metadata[key], subjects.ContractPath+"#/components/schemas/")
			if !ok || !schemaExists(t, name) {
				t.Errorf("endpoint %s: %s %q is not a schema of %s", e.Subject, key, e.Metadata[key], subjects.ContractPath)
			}
		}
		served[e.Subject] = true
	}
	for _, op := range subjects.FleetOps() {
		if !served[subjects.FleetRequest(op)] {
			t.Errorf("%s not served", subjects.FleetRequest(op))
		}
	}
	for _, dev := range []string{"n1-gpu0", "n1-gpu1"} {
		for _, op := range subjects.Ops() {
			if !served[subjects.Request(op, dev)] {
				t.Errorf("%s not served", subjects.Request(op, dev))
			}
		}
	}
}

// TestOneWriterPerNode: a standby serves nothing while the active worker
// of its node lives (one ledger per node: every request is answered by the
// active one, and one request_id makes one allocation); when the active
// stops, the standby takes over within 5 s.
func TestOneWriterPerNode(t *testing.T) {
	srv := startJetStreamServer(t)
	ctx, stopActive := context.WithCancel(context.Background())
	active := startWorkerCtx(t, ctx, srv, "n1")
	standby := startWorker(t, srv, "n1", standingBy())
	nc := connect(t, srv)
	const n = 200
	var ids sync.Map
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var a subjects.Allocation
			body := mustJSON(t, map[string]any{"request_id": fmt.Sprint("r", i%20), "data": map[string]any{"size_bytes": MiB}})
			msg := request(t, nc, subjects.Allocate, "n1-gpu0", body)
			if r, err := subjects.DecodeReply(msg.Data, &a); err != nil || !r.Success {
				t.Errorf("allocate: %s", msg.Data)
				return
			}
			ids.Store(a.AllocationID, true)
		})
	}
	wg.Wait()
	count := 0
	ids.Range(func(any, any) bool { count++; return true })
	if count != 20 {
		t.Errorf("20 request ids made %d allocations", count)
	}
	select {
	case <-standby.Ready():
		t.Fatal("the standby serves while the active worker lives")
	default:
	}
	stopActive()
	active.wait()
	select {
	case <-standby.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("the standby did not take over within 5 s")
	}
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
	if u.Allocations != 0 {
		t.Errorf("the new worker holds %d allocations of the old one", u.Allocations)
	}
}

// TestTwoWorkersStartedAtOnceOneServes: two workers for one node started
// at the same moment: one serves, the other refuses (ErrNodeTaken).
func TestTwoWorkersStartedAtOnceOneServes(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startJetStreamServer(t)
	errs := make(chan error, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 2 {
		cfg := worker.DefaultConfig()
		cfg.Node, cfg.DiscoveryWait = "n1", 10*time.Millisecond
		cfg.Backend = newTestBackend(t, 1, GiB, true)
		cfg.Logger = slog.New(slog.DiscardHandler)
		w, err := worker.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		nc := connect(t, srv)
		wg.Go(func() { errs <- w.Run(ctx, nc) })
	}
	select {
	case err := <-errs:
		if !errors.Is(err, worker.ErrNodeTaken) {
			t.Errorf("the second worker: %v, want ErrNodeTaken", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("both workers serve node n1")
	}
	cancel()
	wg.Wait()
	if err := <-errs; err != nil {
		t.Errorf("the serving worker: %v", err)
	}
}
