package integration

import (
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

func TestOptimizeStrategies(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, 4*GiB), withConfig(func(c *worker.Config) { c.CacheHold = -1 })) // the cache stays for release_cached
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var idle, persistent, busy subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 64 * MiB, Purpose: "cache"}, &idle)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 256 * MiB, Persistent: true}, &persistent)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 1 * GiB}, &busy)
	write(t, h, dev, idle.AllocationID, 7)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: busy.AllocationID}, nil) // 1 GiB cached
	before := checkLedger(t, nc, h, dev, 0)

	// A dry run reports and changes nothing.
	var dry subjects.OptimizeReply
	call(t, nc, subjects.Optimize, dev, subjects.OptimizeRequest{DryRun: true, Strategies: []string{"release_cached", "offload_idle"}, IdleSeconds: 0.001}, &dry)
	if !dry.DryRun || len(dry.Actions) != 2 || dry.Actions[0].BytesFreed != GiB || len(dry.Actions[1].AllocationIDs) != 1 {
		t.Fatalf("dry run: %+v", dry)
	}
	if after := checkLedger(t, nc, h, dev, 0); after.ReservedBytes != before.ReservedBytes || after.Allocations != before.Allocations {
		t.Fatalf("dry run changed the ledger: %+v -> %+v", before, after)
	}

	// Usage is 1344 MiB of 4 GiB (33%): release_cached alone meets a 30%
	// target, so offload_idle does not run.
	var o subjects.OptimizeReply
	call(t, nc, subjects.Optimize, dev, subjects.OptimizeRequest{Strategies: []string{"release_cached", "offload_idle"}, IdleSeconds: 0.001, TargetUsagePercentage: 30}, &o)
	if len(o.Actions) != 1 || o.BytesFreed != GiB || !o.TargetMet || o.UsagePercentageAfter >= o.UsagePercentageBefore {
		t.Fatalf("optimize to 30%%: %+v, want release_cached alone to meet it", o)
	}

	// offload_idle moves the idle, non-persistent allocation to host memory.
	call(t, nc, subjects.Optimize, dev, subjects.OptimizeRequest{Strategies: []string{"offload_idle"}, IdleSeconds: 0.001}, &o)
	if len(o.Actions) != 1 || len(o.Actions[0].AllocationIDs) != 1 || o.Actions[0].AllocationIDs[0] != idle.AllocationID {
		t.Fatalf("offload_idle: %+v", o)
	}
	checkContent(t, h, dev, idle.AllocationID, 7)
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{Purpose: "cache"}, &page)
	if !page.Allocations[0].Offloaded {
		t.Errorf("offloaded allocation reads %+v", page.Allocations[0])
	}
	u := checkLedger(t, nc, h, dev, 0)
	if u.AllocatedBytes != 256*MiB || u.PinnedHostBytes < 64*MiB {
		t.Errorf("after offload: %+v, want only the persistent allocation on the device", u)
	}
	callErr(t, nc, subjects.Optimize, dev, []byte(`{"data":{"strategies":["magic"]}}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Optimize, dev, []byte(`{"data":{"target_usage_percentage":150}}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Optimize, dev, []byte(`{"data":{"strategies":["defragment","defragment"]}}`), subjects.CodeInvalidRequest)
}

func TestModelMemory(t *testing.T) {
	t.Parallel() // a server and worker of its own: runs beside the other long ones
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, 400*MiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	alloc := func(model string, size int64, persistent bool) subjects.Allocation {
		var a subjects.Allocation
		call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: size, ModelID: model, Persistent: persistent}, &a)
		return a
	}
	old := alloc("old-model", 100*MiB, false)
	write(t, h, dev, old.AllocationID, 9)
	time.Sleep(5 * time.Millisecond)
	alloc("mid-model", 100*MiB, false)
	alloc("mid-model", 10*MiB, false)
	time.Sleep(5 * time.Millisecond)
	alloc("base-model", 150*MiB, true)

	var ms subjects.ModelStatusReply
	call(t, nc, subjects.ModelStatus, dev, nil, &ms)
	if len(ms.Models) != 3 || ms.Models[1].ModelID != "mid-model" || ms.Models[1].Allocations != 2 || ms.Models[1].ResidentBytes != 110*MiB {
		t.Fatalf("model status %+v", ms)
	}
	// Usage is 360 of 400 MiB (90%). Offloading the least recently used
	// model reaches 65%, under the 70% target.
	target := 70.0
	var mo subjects.ModelOptimizeReply
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: "Offload", TargetUsagePercentage: &target}, &mo)
	d := mo.OptimizationDetails
	if !mo.Success || len(d.Models) != 1 || d.Models[0].ModelID != "old-model" || mo.MemoryFreedBytes != 100*MiB || !d.TargetMet || d.UsagePercentageAfter != 65 {
		t.Fatalf("model_optimize: %+v", mo)
	}
	checkContent(t, h, dev, old.AllocationID, 9)
	call(t, nc, subjects.ModelStatus, dev, subjects.ModelStatusRequest{ModelID: "old-model"}, &ms)
	if len(ms.Models) != 1 || ms.Models[0].OffloadedBytes != 100*MiB || ms.Models[0].ResidentBytes != 0 {
		t.Errorf("old-model after offload: %+v", ms)
	}

	// Evicting down to 10% frees mid-model but keeps the persistent one.
	target = 10
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: "evict", TargetUsagePercentage: &target}, &mo)
	d = mo.OptimizationDetails
	if mo.Success || d.TargetMet || d.SkippedPersistent != 1 || len(d.Models) != 1 || d.Models[0].ModelID != "mid-model" || mo.Message == "" {
		t.Fatalf("evict to 10%%: %+v", mo)
	}
	// With force the persistent model goes too.
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: "evict", TargetUsagePercentage: &target, Force: true}, &mo)
	if !mo.Success || mo.OptimizationDetails.Models[0].ModelID != "base-model" {
		t.Fatalf("forced evict: %+v", mo)
	}
	checkLedger(t, nc, h, dev, 0)
	callErr(t, nc, subjects.ModelOptimize, dev, []byte(`{"data":{"optimization_type":"shred","target_usage_percentage":50}}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.ModelOptimize, dev, []byte(`{"data":{"optimization_type":"evict"}}`), subjects.CodeInvalidRequest)
}

func TestAnalyticsOverAWindow(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.SampleInterval = 10 * time.Millisecond }))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var big subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 4096, Purpose: "a"}, nil)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 2 * MiB, Purpose: "b"}, nil)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 900 * MiB, Purpose: "b"}, &big) // warning
	var r subjects.AnalyticsReply
	analytics := func() subjects.AnalyticsReply {
		call(t, nc, subjects.Analytics, dev, subjects.AnalyticsRequest{WindowSeconds: 60, MaxSamples: 5}, &r)
		return r
	}
	// The monitor samples every 10 ms; a busy machine may sample later,
	// so the test waits for the samples it needs rather than a time.
	waitFor(t, 10*time.Second, "50 ms at warning", func() bool { return analytics().Pressure.WarningSeconds >= 0.05 })
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: big.AllocationID}, nil)
	call(t, nc, subjects.Clear, dev, subjects.ClearRequest{Purpose: "nothing"}, nil) // releases the cache
	after := r.SampleCount
	waitFor(t, 10*time.Second, "samples after the clear", func() bool {
		a := analytics()
		return a.SampleCount >= 10 && a.SampleCount > after && a.Pressure.NormalSeconds > 0
	})
	if r.Allocations != 3 || r.Frees != 1 || r.AllocationRatePerSecond <= 0 {
		t.Errorf("counts: %d allocations, %d frees", r.Allocations, r.Frees)
	}
	if r.PeakUsedBytes < 900*MiB || r.MeanUsedBytes <= 0 || r.MeanUsedBytes >= r.PeakUsedBytes {
		t.Errorf("peak %d mean %d", r.PeakUsedBytes, r.MeanUsedBytes)
	}
	if len(r.Samples) != 5 || r.SampleCount < 10 {
		t.Errorf("%d samples of %d, want 5 thinned from at least 10", len(r.Samples), r.SampleCount)
	}
	hist := map[int64]int64{}
	for _, b := range r.SizeHistogram {
		hist[b.LeBytes] = b.Count
	}
	if hist[4<<10] != 1 || hist[16<<20] != 1 || hist[4<<30] != 1 {
		t.Errorf("histogram %+v", r.SizeHistogram)
	}
	if r.Pressure.WarningSeconds < 0.05 || r.Pressure.NormalSeconds <= 0 || r.Pressure.CriticalSeconds != 0 {
		t.Errorf("time in levels %+v", r.Pressure)
	}
	if len(r.ByPurpose) != 2 {
		t.Errorf("by purpose %+v", r.ByPurpose)
	}
	callErr(t, nc, subjects.Analytics, dev, []byte(`{"data":{"window_seconds":-1}}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Analytics, dev, []byte(`{"data":{"window_seconds":1e9}}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Analytics, dev, []byte(`{"data":{"max_samples":5000}}`), subjects.CodeInvalidRequest)
	_ = h
}

// TestModelOptimizeMovesModelsWhole: a model that cannot be offloaded
// whole (here: pinned host memory runs out for its second half) stays
// whole on the device and the reply says why; one that can goes, and the
// device memory it held goes back to the device: device truth drops by
// what the reply says was freed. Restore brings it back, ids and bytes
// unchanged, when it fits.
func TestModelOptimizeMovesModelsWhole(t *testing.T) {
	t.Parallel() // a server and worker of its own: runs beside the other long ones
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	faults := h.faults(t)
	nc := connect(t, srv)
	dev := "n1-gpu0"
	// Pinned memory for the first half of big is cached in the pool; the
	// second half will need a new segment, which will fail.
	var p subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB, AllocationType: subjects.Pinned}, &p)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: p.AllocationID}, nil)
	var big1, big2, small subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB, ModelID: "big"}, &big1)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB, ModelID: "big"}, &big2)
	time.Sleep(2 * time.Millisecond) // big is the least recently used
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 100 * MiB, ModelID: "small"}, &small)
	write(t, h, dev, small.AllocationID, 9)
	var before subjects.Usage
	call(t, nc, subjects.GetUsage, dev, nil, &before)

	// The new segment fails, and so do the retries after releasing the
	// caches: the host pinned pool retries once, and the device's pool
	// asks it once more (it retries once again).
	faults.FailAllocs(0, 4)
	target := 10.0
	var r subjects.ModelOptimizeReply
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &target}, &r)
	det := r.OptimizationDetails
	if len(det.SkippedModels) != 1 || det.SkippedModels[0].ModelID != "big" || det.SkippedModels[0].Reason == "" {
		t.Fatalf("skipped %+v, want big, with a reason", det.SkippedModels)
	}
	if len(det.Models) != 1 || det.Models[0].ModelID != "small" || r.MemoryFreedBytes != 100*MiB {
		t.Fatalf("offloaded %+v, freed %d; want small whole, 100 MiB", det.Models, r.MemoryFreedBytes)
	}
	var after subjects.Usage
	call(t, nc, subjects.GetUsage, dev, nil, &after)
	if before.UsedBytes-after.UsedBytes != r.MemoryFreedBytes {
		t.Errorf("device truth: used %d -> %d, the reply says %d freed", before.UsedBytes, after.UsedBytes, r.MemoryFreedBytes)
	}
	var ms subjects.ModelStatusReply
	call(t, nc, subjects.ModelStatus, dev, nil, &ms)
	for _, m := range ms.Models {
		switch m.ModelID {
		case "big":
			if m.ResidentBytes != 400*MiB || m.OffloadedBytes != 0 {
				t.Errorf("big after a failed offload: %+v, want all of it resident", m)
			}
		case "small":
			if m.ResidentBytes != 0 || m.OffloadedBytes != 100*MiB {
				t.Errorf("small after its offload: %+v", m)
			}
		}
	}

	// Restore: not while there is no room, then whole, with the same id
	// and bytes.
	var filler subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 600 * MiB, Purpose: "filler"}, &filler)
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeRestore}, &r)
	if len(r.OptimizationDetails.Models) != 0 || len(r.OptimizationDetails.SkippedModels) != 1 || r.Success {
		t.Fatalf("restore without room: %+v", r)
	}
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: filler.AllocationID}, nil)
	call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeRestore, ModelID: "small"}, &r)
	if len(r.OptimizationDetails.Models) != 1 || r.OptimizationDetails.Models[0].AllocationIDs[0] != small.AllocationID || !r.Success {
		t.Fatalf("restore: %+v", r)
	}
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{ModelID: "small"}, &page)
	if page.TotalCount != 1 || page.Allocations[0].Offloaded || page.Allocations[0].AllocationID != small.AllocationID {
		t.Errorf("small after restore: %+v", page.Allocations)
	}
	checkContent(t, h, dev, small.AllocationID, 9)
	checkLedger(t, nc, h, dev, 0)
}

// TestModelStatusCountsOnlyOffloadsAsOffloaded: a PINNED copy made by a
// transfer is host memory of the model, not an offload.
func TestModelStatusCountsOnlyOffloadsAsOffloaded(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 16 * MiB, ModelID: "m"}, &a)
	call(t, nc, subjects.Transfer, "n1-gpu0", subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ms subjects.ModelStatusReply
		call(t, nc, subjects.ModelStatus, "n1-gpu0", subjects.ModelStatusRequest{ModelID: "m"}, &ms)
		if len(ms.Models) == 1 && ms.Models[0].HostBytes == 16*MiB {
			if ms.Models[0].OffloadedBytes != 0 || ms.Models[0].ResidentBytes != 16*MiB {
				t.Errorf("model m: %+v, want 16 MiB resident and 16 MiB host, none offloaded", ms.Models[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("model m: %+v, the copy never showed", ms.Models)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
