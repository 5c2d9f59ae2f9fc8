package ledger_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/monitor"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

var ctx = context.Background()

// op is the operator: these tests act for the worker's own account.
var op = ledger.Who{}

// newDevice returns the ledger of the first device of a sim host of n
// devices of total bytes each, reading device truth on every call.
func newDevice(t *testing.T, total int64, tweak func(*ledger.Config)) (*ledger.Device, *sim.Backend) {
	t.Helper()
	return newDeviceOn(t, sim.New(sim.Default(1, total)), tweak)
}

// newPlainDevice is newDevice with virtual memory management off: its VRAM
// pool takes segments of their own (cuMemAlloc's), which compaction copies
// between.
func newPlainDevice(t *testing.T, total int64) (*ledger.Device, *sim.Backend) {
	t.Helper()
	cfg := sim.Default(1, total)
	cfg.DisableVMM = true
	return newDeviceOn(t, sim.New(cfg), nil)
}

func newDeviceOn(t *testing.T, b *sim.Backend, tweak func(*ledger.Config)) (*ledger.Device, *sim.Backend) {
	t.Helper()
	infos, err := b.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ledger.Config{
		ID: "n-gpu0", Node: "n", Info: infos[0], Backend: b,
		Thresholds: monitor.DefaultThresholds(), IdleAfter: time.Hour,
		TelemetryMaxAge: time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	return ledger.New(cfg), b
}

// valid returns req after its validation, which also fills defaults.
// call is a request of who, now.
func call(who ledger.Who) ledger.Call { return ledger.Call{Who: who, Now: time.Now()} }

func valid[R any](t *testing.T, req *R) *R {
	t.Helper()
	if v, ok := any(req).(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			t.Fatalf("%+v: %v", req, err)
		}
	}
	return req
}

func allocate(t *testing.T, d *ledger.Device, req subjects.AllocateRequest) subjects.Allocation {
	t.Helper()
	a, _, err := d.Allocate(ctx, call(op), valid(t, &req))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func usage(t *testing.T, d *ledger.Device) subjects.Usage {
	t.Helper()
	u, err := d.Usage(ctx, time.Now().UTC())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// audit fails t when the ledger and its pools disagree.
func audit(t *testing.T, d *ledger.Device) {
	t.Helper()
	if err := d.Audit(); err != nil {
		t.Fatal(err)
	}
}

func TestAllocateAndDeallocate(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	a := allocate(t, d, subjects.AllocateRequest{SizeBytes: 3 * mib, Purpose: "kv_cache", ModelID: "m", TTLSeconds: 60})
	if a.DeviceID != "n-gpu0" || a.ReservedBytes < a.SizeBytes || a.ExpiresAt == nil || a.AllocationType != subjects.VRAM {
		t.Fatalf("allocation %+v", a)
	}
	if loc, n, err := d.Locate(a.AllocationID); err != nil || n != 3*mib || loc.Kind != device.VRAM {
		t.Fatalf("Locate: %+v %d %v", loc, n, err)
	}
	u := usage(t, d)
	if u.AllocatedBytes != a.ReservedBytes || u.Allocations != 1 || u.UsedBytes < a.ReservedBytes {
		t.Errorf("usage after allocate: %+v", u)
	}
	if bp := d.WithPurposes(u, op).ByPurpose; len(bp) != 1 || bp[0].Purpose != "kv_cache" || bp[0].AllocatedBytes != a.ReservedBytes {
		t.Errorf("by purpose: %+v", bp)
	}

	// All or nothing: one unknown id frees nothing.
	_, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationIDs: []string{a.AllocationID, "nope"}}), op)
	if !errors.Is(err, ledger.ErrAllocationNotFound) || d.Len() != 1 {
		t.Fatalf("deallocate with an unknown id: %v, %d left", err, d.Len())
	}
	r, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op)
	if err != nil || r.FreedBytes != a.ReservedBytes || len(r.DeallocatedIDs) != 1 || d.Len() != 0 {
		t.Fatalf("deallocate: %+v, %v", r, err)
	}
	if _, _, err := d.Locate(a.AllocationID); !errors.Is(err, ledger.ErrAllocationNotFound) {
		t.Errorf("Locate after free: %v", err)
	}
	audit(t, d)
}

// TestAnAllocationRemembersItsRequest: the request that made an allocation
// finds it for as long as it lives (a retry gets it, a retry asking for
// something else is a conflict), and no longer.
func TestAnAllocationRemembersItsRequest(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	r1 := ledger.Call{Now: time.Now(), RequestID: "r1"}
	a, _, err := d.Allocate(ctx, r1, valid(t, &subjects.AllocateRequest{SizeBytes: mib}))
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := d.Allocate(ctx, r1, valid(t, &subjects.AllocateRequest{SizeBytes: mib}))
	if err != nil || again.AllocationID != a.AllocationID || d.Len() != 1 {
		t.Fatalf("retry: %+v, %v, %d allocations", again, err, d.Len())
	}
	if _, _, err := d.Allocate(ctx, r1, valid(t, &subjects.AllocateRequest{SizeBytes: 2 * mib})); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("retry with another size: %v, want a conflict", err)
	}
	other := ledger.Call{Who: ledger.Who{Tenant: "B"}, Now: time.Now(), RequestID: "r1"}
	if b, _, err := d.Allocate(ctx, other, valid(t, &subjects.AllocateRequest{SizeBytes: mib})); err != nil || b.AllocationID == a.AllocationID {
		t.Fatalf("another tenant's r1: %+v, %v: its request ids are its own", b, err)
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); err != nil {
		t.Fatal(err)
	}
	if b, _, err := d.Allocate(ctx, r1, valid(t, &subjects.AllocateRequest{SizeBytes: mib})); err != nil || b.AllocationID == a.AllocationID {
		t.Fatalf("r1 after its allocation was freed: %+v, %v: want a new allocation", b, err)
	}
}

func TestTheAllocationCapIsKept(t *testing.T) {
	d, _ := newDevice(t, gib, func(c *ledger.Config) { c.MaxAllocations = 3 })
	for range 3 {
		allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096})
	}
	_, _, err := d.Allocate(ctx, call(op), valid(t, &subjects.AllocateRequest{SizeBytes: 4096}))
	if !errors.Is(err, device.ErrOutOfMemory) || !strings.Contains(err.Error(), "3 allocations") || d.Len() != 3 {
		t.Errorf("past the cap: %v, %d allocations", err, d.Len())
	}
}

func TestAllocateRefusals(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	tests := []struct {
		name string
		req  subjects.AllocateRequest
		want error
	}{
		{"larger than the device", subjects.AllocateRequest{SizeBytes: 2 * gib}, device.ErrOutOfMemory},
		{"the backend is full", subjects.AllocateRequest{SizeBytes: gib}, device.ErrOutOfMemory},
	}
	b.SetExternalUsage(0, gib/2)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := d.Allocate(ctx, call(op), valid(t, &tt.req)); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
			if d.Len() != 0 {
				t.Errorf("%d allocations after a refusal", d.Len())
			}
		})
	}
	audit(t, d)
}

func TestExportedAllocationsCarryAHandle(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	a := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Export: true})
	if !a.Exported || a.IPCHandle == "" {
		t.Fatalf("exported allocation %+v", a)
	}
	rep, err := d.Defragment(ctx, nil)
	if err != nil || rep.UnmovedAllocations != 1 || rep.BlocksMoved != 0 {
		t.Errorf("defragment with an exported allocation: %+v, %v", rep, err)
	}
}

func TestExpireFreesLeasesPastTheirTTL(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	lease := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 1})
	keep := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib})
	if got, err := d.Expire(time.Now()); err != nil || len(got) != 0 {
		t.Fatalf("before the ttl: %+v, %v", got, err)
	}
	got, err := d.Expire(lease.ExpiresAt.Add(time.Millisecond))
	if err != nil || len(got) != 1 || got[0].AllocationID != lease.AllocationID || got[0].Bytes != lease.ReservedBytes {
		t.Fatalf("after the ttl: %+v, %v", got, err)
	}
	if _, _, err := d.Locate(keep.AllocationID); err != nil {
		t.Errorf("the allocation without a ttl went: %v", err)
	}
	audit(t, d)
}

func TestClear(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Purpose: "a"})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Purpose: "b"})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Purpose: "a", Persistent: true})
	busy := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Purpose: "a"})
	if _, err := d.Lend(busy.AllocationID, ledger.Target{DeviceID: "n-gpu0", TotalBytes: gib, Type: subjects.Pinned}, subjects.ModeCopy, op); err != nil {
		t.Fatal(err)
	}
	no := false
	r, err := d.Clear(ctx, valid(t, &subjects.ClearRequest{Purpose: "a", ReleaseCached: &no}), op)
	if err != nil || r.ClearedAllocations != 1 || r.SkippedPersistent != 1 || r.SkippedBusy != 1 || r.ReleasedBytes != 0 {
		t.Fatalf("clear purpose a: %+v, %v", r, err)
	}
	d.Return(busy.AllocationID)
	r, err = d.Clear(ctx, valid(t, &subjects.ClearRequest{Force: true}), op)
	if err != nil || r.ClearedAllocations != 3 || r.ReleasedSegments == 0 || r.ReleasedBytes == 0 {
		t.Fatalf("clear with force: %+v, %v", r, err)
	}
	if u := usage(t, d); u.ReservedBytes != 0 || u.UsedBytes != 0 {
		t.Errorf("after clearing everything: reserved %d, used %d", u.ReservedBytes, u.UsedBytes)
	}
	audit(t, d)
}

func TestAllocationsFilterAndPage(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	for range 5 {
		allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, ModelID: "m"})
	}
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, ModelID: "other"})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, AllocationType: subjects.Pinned, ModelID: "m"})
	yes := true
	if r := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{Persistent: &yes})); r.TotalCount != 0 {
		t.Errorf("persistent only: %d", r.TotalCount)
	}
	req := valid(t, &subjects.AllocationsRequest{ModelID: "m", AllocationType: subjects.VRAM, Limit: 2})
	seen := map[string]bool{}
	for {
		r := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, req)
		if r.TotalCount != 5 {
			t.Fatalf("total %d, want 5", r.TotalCount)
		}
		for _, a := range r.Allocations {
			if seen[a.AllocationID] || a.ModelID != "m" || a.AllocationType != subjects.VRAM {
				t.Fatalf("page holds %+v", a)
			}
			seen[a.AllocationID] = true
		}
		if r.NextCursor == "" {
			break
		}
		req.Cursor = r.NextCursor
	}
	if len(seen) != 5 {
		t.Errorf("paged %d allocations, want 5", len(seen))
	}
}

func TestObserveAndConsumers(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	if _, changed := d.Observe(usage(t, d)); !changed {
		t.Error("the first observation is a change (to the level found)")
	}
	allocate(t, d, subjects.AllocateRequest{SizeBytes: 600 * mib, ModelID: "big", Purpose: "weights"})
	b.SetExternalUsage(0, 300*mib)
	u := usage(t, d)
	p, changed := d.Observe(u)
	if !changed || p.Level != subjects.LevelWarning || p.PreviousLevel != subjects.LevelNormal || p.UsedBytes != u.UsedBytes {
		t.Fatalf("at %.2f: %+v changed=%v", u.UsageRatio, p, changed)
	}
	if _, changed := d.Observe(u); changed {
		t.Error("the same usage again is no change")
	}
	if level, prev := d.Level(); level != subjects.LevelWarning || prev != subjects.LevelNormal {
		t.Errorf("Level() = %s, %s", level, prev)
	}
	cs := d.Consumers(u, 2)
	if len(cs) != 2 || cs[0].Bytes < cs[1].Bytes || cs[1].Kind == subjects.ConsumerOther {
		t.Errorf("top 2 consumers: %+v", cs)
	}
	all := d.Consumers(u, 10)
	kinds := map[string]bool{}
	for _, c := range all {
		kinds[c.Kind] = true
	}
	if !kinds[subjects.ConsumerModel] || !kinds[subjects.ConsumerPurpose] || !kinds[subjects.ConsumerOther] {
		t.Errorf("consumers %+v, want a model, a purpose and other processes", all)
	}
}

func TestStatusIncludesWhatIsAskedFor(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	b.SetExternalUsage(0, 10*mib)
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, Purpose: "p"})
	u := usage(t, d)
	p, _ := d.Observe(u)
	st := d.Status(ctx, valid(t, &subjects.StatusRequest{IncludeAllocations: true, IncludeFragmentation: true}), u, p, op)
	if st.Device.DeviceID != "n-gpu0" || st.Device.Node != "n" || st.Device.Backend != "sim" || st.AllocationCount != 1 {
		t.Errorf("device %+v, %d allocations", st.Device, st.AllocationCount)
	}
	if len(st.Allocations) != 1 || st.Fragmentation == nil || st.UsageStats == nil || len(st.Usage.ByPurpose) != 1 {
		t.Errorf("status parts: allocations %d, fragmentation %v, stats %v, purposes %v", len(st.Allocations), st.Fragmentation, st.UsageStats, st.Usage.ByPurpose)
	}
	if len(st.Usage.Processes) == 0 || st.Usage.ProcessesSampledAt == nil {
		t.Errorf("telemetry missing: %+v", st.Usage.Processes)
	}
}

func TestDefragmentMovesBytesAndReleasesSegments(t *testing.T) {
	d, b := newPlainDevice(t, 4*gib)
	// 40 blocks of 8 MiB, two to a 20 MiB segment; every other one freed
	// leaves each segment half used, with a free range as large as the
	// block: half the segments can go.
	var all, keep []subjects.Allocation
	for range 40 {
		all = append(all, allocate(t, d, subjects.AllocateRequest{SizeBytes: 8 * mib}))
	}
	for i, a := range all {
		if i%2 == 0 {
			keep = append(keep, a)
			continue
		}
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); err != nil {
			t.Fatal(err)
		}
	}
	write := func(a subjects.Allocation) []byte {
		loc, n, _ := d.Locate(a.AllocationID)
		p := bytes.Repeat([]byte(a.AllocationID[len(a.AllocationID)-4:]), int(n/4))
		if err := b.Write(ctx, loc, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	want := map[string][]byte{}
	for _, a := range keep {
		want[a.AllocationID] = write(a)
	}
	// A dry run of optimize's defragment plans without moving.
	dry, err := d.Optimize(ctx, valid(t, &subjects.OptimizeRequest{Strategies: []string{subjects.StrategyDefragment}, DryRun: true}))
	if err != nil || dry.BytesFreed == 0 {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	steps := 0
	rep, err := d.Defragment(ctx, func() { steps++ })
	if err != nil || rep.BlocksMoved != 10 || rep.SegmentsReleased != 10 || rep.BytesMoved != 10*8*mib {
		t.Fatalf("defragment: %+v, %v", rep, err)
	}
	if rep.SegmentsReleased > 1 && steps == 0 {
		t.Errorf("%d segments released in one step: nothing could come in between", rep.SegmentsReleased)
	}
	for _, a := range keep {
		loc, n, err := d.Locate(a.AllocationID)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		if err := b.Read(ctx, loc, got); err != nil || !bytes.Equal(got, want[a.AllocationID]) {
			t.Fatalf("%s after defragment: bytes differ (%v)", a.AllocationID, err)
		}
	}
	audit(t, d)
}

// TestDefragmentReleasesBeforeItCopies: with every other 256 MiB block
// freed, the freed blocks are whole empty segments: defragment returns them
// without moving a byte.
func TestDefragmentReleasesBeforeItCopies(t *testing.T) {
	d, _ := newPlainDevice(t, 32*gib)
	var all []subjects.Allocation
	for range 100 {
		all = append(all, allocate(t, d, subjects.AllocateRequest{SizeBytes: 256 * mib}))
	}
	for i := 1; i < len(all); i += 2 {
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: all[i].AllocationID}), op); err != nil {
			t.Fatal(err)
		}
	}
	before := usage(t, d)
	rep, err := d.Defragment(ctx, nil)
	if err != nil || rep.BytesMoved != 0 || rep.BlocksMoved != 0 || rep.SegmentsReleased != 50 || rep.ReleasedBytes != 50*256*mib {
		t.Fatalf("defragment: %+v, %v; want 50 segments released, nothing moved", rep, err)
	}
	if after := usage(t, d); before.UsedBytes-after.UsedBytes != rep.ReleasedBytes {
		t.Errorf("device truth: used %d -> %d, want a drop of the %d bytes released", before.UsedBytes, after.UsedBytes, rep.ReleasedBytes)
	}
	audit(t, d)
}

func TestModelOptimizeActsOnTheLeastRecentlyUsedModel(t *testing.T) {
	for _, typ := range []string{subjects.OptimizeOffload, subjects.OptimizeEvict} {
		t.Run(typ, func(t *testing.T) {
			d, _ := newDevice(t, gib, nil)
			old := allocate(t, d, subjects.AllocateRequest{SizeBytes: 300 * mib, ModelID: "old"})
			allocate(t, d, subjects.AllocateRequest{SizeBytes: 300 * mib, ModelID: "new"})
			allocate(t, d, subjects.AllocateRequest{SizeBytes: 100 * mib, ModelID: "new", Persistent: true})
			target := 50.0
			r, err := d.ModelOptimize(ctx, call(op), valid(t, &subjects.ModelOptimizeRequest{OptimizationType: typ, TargetUsagePercentage: &target}))
			if err != nil {
				t.Fatal(err)
			}
			det := r.OptimizationDetails
			if len(det.Models) != 1 || det.Models[0].ModelID != "old" || det.Models[0].AllocationIDs[0] != old.AllocationID || !det.TargetMet || r.MemoryFreedBytes == 0 {
				t.Fatalf("reply %+v", r)
			}
			ms := d.ModelStatus(valid(t, &subjects.ModelStatusRequest{}), op)
			wantModels := map[string]int{subjects.OptimizeOffload: 2, subjects.OptimizeEvict: 1}[typ]
			if len(ms.Models) != wantModels || ms.Models[0].ModelID != "new" || ms.Models[0].PersistentAllocations != 1 {
				t.Fatalf("model status %+v", ms)
			}
			if typ == subjects.OptimizeOffload && (ms.Models[1].OffloadedBytes == 0 || ms.Models[1].ResidentBytes != 0) {
				t.Errorf("offloaded model %+v", ms.Models[1])
			}
			// Nothing left but the persistent allocation: the target is not
			// met, and the reply says why.
			target = 0
			r, err = d.ModelOptimize(ctx, call(op), valid(t, &subjects.ModelOptimizeRequest{OptimizationType: typ, TargetUsagePercentage: &target}))
			if err != nil || r.OptimizationDetails.TargetMet || r.OptimizationDetails.SkippedPersistent != 1 {
				t.Fatalf("down to 0: %+v, %v", r, err)
			}
			audit(t, d)
		})
	}
}

func TestOptimizeStrategies(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	lease := allocate(t, d, subjects.AllocateRequest{SizeBytes: 64 * mib, TTLSeconds: 0.001})
	idle := allocate(t, d, subjects.AllocateRequest{SizeBytes: 64 * mib})
	time.Sleep(5 * time.Millisecond)

	dry, err := d.Optimize(ctx, valid(t, &subjects.OptimizeRequest{Strategies: []string{subjects.StrategyFreeExpired, subjects.StrategyOffloadIdle}, IdleSeconds: 0.001, DryRun: true}))
	if err != nil || len(dry.Actions) != 2 || dry.Actions[0].AllocationIDs[0] != lease.AllocationID || dry.Actions[1].BytesFreed == 0 {
		t.Fatalf("dry run %+v, %v", dry, err)
	}
	if d.Len() != 2 {
		t.Fatalf("a dry run freed allocations: %d left", d.Len())
	}
	r, err := d.Optimize(ctx, valid(t, &subjects.OptimizeRequest{
		Strategies:  []string{subjects.StrategyFreeExpired, subjects.StrategyReleaseCached, subjects.StrategyOffloadIdle, subjects.StrategyDefragment},
		IdleSeconds: 0.001,
	}))
	if err != nil || len(r.Actions) != 4 || !r.TargetMet {
		t.Fatalf("optimize %+v, %v", r, err)
	}
	if r.UsagePercentageAfter != 0 {
		t.Errorf("usage after freeing the lease and offloading the rest: %.2f%%, want 0", r.UsagePercentageAfter)
	}
	ms := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{}))
	if ms.TotalCount != 1 || ms.Allocations[0].AllocationID != idle.AllocationID || !ms.Allocations[0].Offloaded {
		t.Errorf("after optimize: %+v", ms.Allocations)
	}
	audit(t, d)
}

func TestTransferSteps(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	a := allocate(t, d, subjects.AllocateRequest{SizeBytes: 2 * mib, ModelID: "m"})
	here := ledger.Target{DeviceID: "n-gpu0", TotalBytes: gib, Type: subjects.VRAM}
	tests := []struct {
		name   string
		id     string
		target ledger.Target
		mode   string
		want   error
	}{
		{"unknown allocation", "nope", here, subjects.ModeCopy, ledger.ErrAllocationNotFound},
		{"move to where it is", a.AllocationID, here, subjects.ModeMove, ledger.ErrInvalid},
		{"larger than the target", a.AllocationID, ledger.Target{DeviceID: "n-gpu1", TotalBytes: mib, Type: subjects.VRAM}, subjects.ModeCopy, device.ErrOutOfMemory},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.Lend(tt.id, tt.target, tt.mode, op); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}

	lent, err := d.Lend(a.AllocationID, ledger.Target{DeviceID: "n-gpu0", TotalBytes: gib, Type: subjects.Pinned}, subjects.ModeMove, op)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lend(a.AllocationID, here, subjects.ModeCopy, op); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("lending a busy allocation: %v, want a conflict", err)
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("freeing a busy allocation: %v, want a conflict", err)
	}
	destID, dst, err := d.Receive(ctx, call(op), lent, subjects.Pinned)
	if err != nil || dst.Kind != device.Pinned {
		t.Fatalf("receive: %v %+v", err, dst)
	}
	if err := b.Copy(ctx, dst, lent.Loc, lent.Allocation.SizeBytes); err != nil {
		t.Fatal(err)
	}
	if err := d.Settle(a.AllocationID, true, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := d.Settle(destID, false, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	r := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{}))
	if r.TotalCount != 1 || r.Allocations[0].AllocationID != destID || r.Allocations[0].AllocationType != subjects.Pinned || r.Allocations[0].ModelID != "m" {
		t.Fatalf("after the move: %+v", r.Allocations)
	}
	if err := d.Settle("gone", false, false, time.Now()); !errors.Is(err, ledger.ErrAllocationNotFound) {
		t.Errorf("settling an unknown allocation: %v", err)
	}
	audit(t, d)
}

func TestAnalyticsSummarisesTheHistory(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	for range 3 {
		a := allocate(t, d, subjects.AllocateRequest{SizeBytes: 2 * mib})
		d.Record(usage(t, d), subjects.LevelNormal)
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); err != nil {
			t.Fatal(err)
		}
	}
	d.Observe(usage(t, d))
	r := d.Analytics(valid(t, &subjects.AnalyticsRequest{WindowSeconds: 60}), op)
	if r.Allocations != 3 || r.Frees != 3 || r.SampleCount != 3 || r.PeakReservedBytes == 0 || r.AllocationRatePerSecond == 0 {
		t.Errorf("analytics %+v", r)
	}
	var inHistogram int64
	for _, bkt := range r.SizeHistogram {
		inHistogram += bkt.Count
	}
	if inHistogram != 3 {
		t.Errorf("histogram holds %d allocations, want 3", inHistogram)
	}
	if r.Pressure.NormalSeconds <= 0 {
		t.Errorf("time in levels %+v", r.Pressure)
	}
}

func TestRecommendations(t *testing.T) {
	d, b := newDevice(t, gib, func(c *ledger.Config) { c.IdleAfter = time.Millisecond })
	// Cached empty segments, an idle allocation, an expired lease and a
	// model under pressure.
	allocate(t, d, subjects.AllocateRequest{SizeBytes: 100 * mib, ModelID: "m"})
	tmp := allocate(t, d, subjects.AllocateRequest{SizeBytes: 64 * mib})
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: tmp.AllocationID}), op); err != nil {
		t.Fatal(err)
	}
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 0.001})
	// Pressure counts the cache as available: what nobody can get must
	// pass the warning threshold.
	b.SetExternalUsage(0, 820*mib)
	time.Sleep(5 * time.Millisecond)
	u := usage(t, d)
	p, _ := d.Observe(u)
	if p.Level == subjects.LevelNormal {
		t.Fatalf("level %s at pressure %.2f", p.Level, u.PressureRatio)
	}
	r := d.Recommendations(u, p)
	types := map[string]subjects.Recommendation{}
	for _, rec := range r.Recommendations {
		types[rec.Type] = rec
		if rec.SuggestedAction.Op == "" || rec.EstimatedSavingsBytes <= 0 {
			t.Errorf("recommendation %+v", rec)
		}
	}
	for _, want := range []string{"free_expired", "release_cached", "offload_idle", "offload_models"} {
		if _, ok := types[want]; !ok {
			t.Errorf("no %s among %+v", want, r.Recommendations)
		}
	}
	if first := r.Recommendations[0].Type; first != "free_expired" && first != "release_cached" {
		t.Errorf("the first recommendation is %s, want one that copies nothing", first)
	}
}

func TestPageFollowsTheCursor(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	var id []string
	for range 5 {
		id = append(id, allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096}).AllocationID)
	}
	// A freed allocation's id still works as a cursor.
	gone := allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096}).AllocationID
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: gone}), op); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cursor     string
		limit      int
		want       []string
		wantCursor string
	}{
		{"first page", "", 2, id[0:2], id[1]},
		{"next page", id[1], 2, id[2:4], id[3]},
		{"last page has no cursor", id[3], 2, id[4:], ""},
		{"exactly the rest", id[2], 2, id[3:], ""},
		{"all at once", "", 10, id, ""},
		{"cursor past the end", gone, 2, []string{}, ""},
		{"cursor that is no id", "zzz", 2, []string{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{Cursor: tt.cursor, Limit: tt.limit}))
			ids := []string{}
			for _, a := range got.Allocations {
				ids = append(ids, a.AllocationID)
			}
			if diff := cmp.Diff(tt.want, ids); diff != "" {
				t.Errorf("page (-want +got):\n%s", diff)
			}
			if got.NextCursor != tt.wantCursor || got.TotalCount != len(id) {
				t.Errorf("next cursor %q, total %d; want %q, %d", got.NextCursor, got.TotalCount, tt.wantCursor, len(id))
			}
		})
	}
}

func TestAllocationsByID(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	a := allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096})
	r := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{AllocationIDs: []string{a.AllocationID, "nope", a.AllocationID}}))
	if r.TotalCount != 1 || len(r.Allocations) != 1 || r.Allocations[0].AllocationID != a.AllocationID {
		t.Errorf("by id: %+v", r)
	}
	if r := d.Allocations(context.Background(), ledger.Call{Who: ledger.Who{Tenant: "other"}, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{AllocationIDs: []string{a.AllocationID}})); r.TotalCount != 0 {
		t.Errorf("another tenant finds %+v", r.Allocations)
	}
}

// TestVirtualMemoryIsReleasedWithoutMoving is the fragmentation
// cases on virtual memory: blocks of 256 MiB and of 8 MiB, every other one
// freed; release_cached and defragment give every free chunk back to the
// device, move nothing, and the live bytes stay where they were.
func TestVirtualMemoryIsReleasedWithoutMoving(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int64
		count int
		via   string
	}{
		{"256MiB-defragment", 256 * mib, 100, subjects.StrategyDefragment},
		{"8MiB-defragment", 8 * mib, 100, subjects.StrategyDefragment},
		{"8MiB-release_cached", 8 * mib, 100, subjects.StrategyReleaseCached},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, b := newDevice(t, 32*gib, nil)
			var all []subjects.Allocation
			for range tc.count {
				all = append(all, allocate(t, d, subjects.AllocateRequest{SizeBytes: tc.size}))
			}
			if s := d.PoolStats(device.VRAM); s.Segments != 1 {
				t.Fatalf("%d allocations took %d segments, want one growing in place", tc.count, s.Segments)
			}
			// Each live block gets its first and last 4 KiB written (the
			// sim keeps real bytes: 12.5 GiB would not fit a test).
			edges := func(id string) []device.Location {
				loc, n, _ := d.Locate(id)
				end := loc
				end.Addr += uint64(n - 4096)
				return []device.Location{loc, end}
			}
			want := map[string][]byte{}
			for i, a := range all {
				if i%2 == 1 {
					if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want[a.AllocationID] = bytes.Repeat([]byte{byte(i + 1)}, 4096)
				for _, loc := range edges(a.AllocationID) {
					if err := b.Write(ctx, loc, want[a.AllocationID]); err != nil {
						t.Fatal(err)
					}
				}
			}
			before := usage(t, d)
			freed := int64(tc.count/2) * tc.size
			var released int64
			if tc.via == subjects.StrategyReleaseCached {
				rep, err := d.Optimize(ctx, valid(t, &subjects.OptimizeRequest{Strategies: []string{tc.via}}))
				if err != nil {
					t.Fatal(err)
				}
				released = rep.BytesFreed
			} else {
				rep, err := d.Defragment(ctx, nil)
				if err != nil || rep.BytesMoved != 0 || rep.BlocksMoved != 0 {
					t.Fatalf("defragment: %+v, %v; want nothing moved", rep, err)
				}
				if rep.After.FreeBytes != 0 {
					t.Errorf("after defragment %d free bytes stay mapped", rep.After.FreeBytes)
				}
				released = rep.ReleasedBytes
			}
			if released != freed {
				t.Errorf("released %d bytes, want the %d freed", released, freed)
			}
			if after := usage(t, d); before.UsedBytes-after.UsedBytes != freed || after.ReservedBytes != after.AllocatedBytes {
				t.Errorf("device truth: used %d -> %d, want a drop of %d; %d reserved for %d allocated", before.UsedBytes, after.UsedBytes, freed, after.ReservedBytes, after.AllocatedBytes)
			}
			for id, p := range want {
				for _, loc := range edges(id) {
					got := make([]byte, len(p))
					if err := b.Read(ctx, loc, got); err != nil || !bytes.Equal(got, p) {
						t.Fatalf("%s after release: bytes differ (%v)", id, err)
					}
				}
			}
			audit(t, d)
		})
	}
}

// TestMapPieceSetsWhatGoesBack: memory goes back to the device a whole
// piece at a time. A freed 1 GiB block, then ten 8 MiB blocks carved from
// it: with pieces of one chunk everything else goes back, with the default
// 256 MiB pieces what shares a piece with them stays cached.
func TestMapPieceSetsWhatGoesBack(t *testing.T) {
	for _, tc := range []struct {
		piece, want int64
	}{
		{2 * mib, gib - 80*mib},
		{0, gib - 256*mib},
	} {
		d, _ := newDevice(t, 4*gib, func(c *ledger.Config) { c.MapPiece = tc.piece })
		big := allocate(t, d, subjects.AllocateRequest{SizeBytes: gib})
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: big.AllocationID}), op); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			allocate(t, d, subjects.AllocateRequest{SizeBytes: 8 * mib})
		}
		before := usage(t, d)
		rep, err := d.Optimize(ctx, valid(t, &subjects.OptimizeRequest{Strategies: []string{subjects.StrategyReleaseCached}}))
		if err != nil || rep.BytesFreed != tc.want {
			t.Errorf("piece %d: release_cached freed %d (%v), want %d", tc.piece, rep.BytesFreed, err, tc.want)
		}
		if after := usage(t, d); before.UsedBytes-after.UsedBytes != tc.want {
			t.Errorf("piece %d: device truth dropped %d, want %d", tc.piece, before.UsedBytes-after.UsedBytes, tc.want)
		}
		audit(t, d)
	}
}
