package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestPressureFollowsDeviceTruth drives a device over and under the
// thresholds with allocations and with other processes' use. (Without
// auto-release, so a freed block stays cached.)
func TestPressureFollowsDeviceTruth(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.AutoRelease = false }))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	level := func() subjects.Pressure {
		var p subjects.Pressure
		call(t, nc, subjects.GetPressure, dev, nil, &p)
		return p
	}
	if p := level(); p.Level != subjects.LevelNormal || p.UsageRatio != 0 {
		t.Fatalf("idle device: %+v", p)
	}
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 880 * MiB}, &a) // 0.859
	if p := level(); p.Level != subjects.LevelWarning || p.PreviousLevel != subjects.LevelNormal || p.Trend != subjects.TrendRising {
		t.Errorf("at 86%%: %+v, want warning after normal", p)
	}
	h.external(t, 0, 100*MiB) // another process: 0.957
	if p := level(); p.Level != subjects.LevelCritical || p.Trend != subjects.TrendRising || p.UsedBytes != 980*MiB {
		t.Errorf("at 96%% with another process: %+v, want critical and rising", p)
	}
	// The device is nearly full: a large allocation is refused and changes
	// nothing.
	callErr(t, nc, subjects.Allocate, dev, mustJSON(t, map[string]any{"data": map[string]any{"size_bytes": 100 * MiB}}), subjects.CodeOutOfMemory)
	h.external(t, 0, 80*MiB) // 0.9375: inside the critical margin
	if p := level(); p.Level != subjects.LevelCritical {
		t.Errorf("at 93.75%%: %+v, want critical held by hysteresis", p)
	}
	h.external(t, 0, 0)
	if p := level(); p.Level != subjects.LevelWarning {
		t.Errorf("back at 86%%: %+v, want warning", p)
	}
	// Freed, the block stays cached in the pool: device truth still counts
	// it as used, but anyone can get it, so the pressure is gone.
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	p := level()
	if p.Level != subjects.LevelNormal || p.PreviousLevel != subjects.LevelWarning || p.PressureRatio != 0 ||
		p.UsageRatio < 0.85 || p.ReclaimableBytes < 880*MiB || p.AvailableBytes != GiB {
		t.Errorf("after freeing: %+v, want normal at pressure 0 with the cached block reclaimable and usage still 86%%", p)
	}
	call(t, nc, subjects.Clear, dev, nil, nil)
	if p := level(); p.UsageRatio != 0 || p.ReclaimableBytes != 0 {
		t.Errorf("after clear: %+v, want the cache given back", p)
	}
	checkLedger(t, nc, h, dev, 0)
}

// TestFreeingEndsPressureAtOnce: allocate to critical, free: the free's
// own pressure check announces normal, long before the next sample.
func TestFreeingEndsPressureAtOnce(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(1, 16*GiB), withConfig(func(c *worker.Config) { c.SampleInterval = time.Hour }))
	next(2 * time.Second) // startup
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 15616 * MiB}, &a) // 15.25 GiB: 0.953
	if r := next(time.Second); r.data.Level != subjects.LevelCritical {
		t.Fatalf("after allocating 15.25 GiB: %+v", r.data)
	}
	call(t, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	// Device truth is still past the warning threshold with the freed
	// block cached, so auto-release hands it back at once.
	r := next(time.Second)
	if r.data.Level != subjects.LevelNormal || r.data.PressureRatio != 0 || r.data.ReleasedBytes < 15616*MiB || r.data.UsageRatio != 0 {
		t.Errorf("after freeing: %+v, want normal, the block returned to the device", r.data)
	}
	checkLedger(t, nc, h, "n1-gpu0", 0)
}

// TestAutoReleaseGivesTheCacheToOtherProcesses: when another process grows
// past the warning threshold, the worker returns its empty cached segments
// to the device, and the event says how much.
func TestAutoReleaseGivesTheCacheToOtherProcesses(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("auto-release=", on), func(t *testing.T) {
			srv := startServer(t)
			nc := connect(t, srv)
			next := subscribeEvents(t, nc, "n1-gpu0")
			h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.AutoRelease = on }))
			next(2 * time.Second) // startup
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 100 * MiB}, &a)
			call(t, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
			h.external(t, 0, 900*MiB) // 0.977 used, 0.879 nobody can get
			var u subjects.Usage
			call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 4096, AllocationType: subjects.Pinned}, nil)
			call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
			r := next(time.Second)
			if r.data.Level != subjects.LevelWarning {
				t.Fatalf("event %+v, want warning", r.data)
			}
			if on {
				if r.data.ReleasedBytes < 100*MiB || u.ReclaimableBytes != 0 || u.UsedBytes != 900*MiB {
					t.Errorf("auto-release on: event released %d bytes, usage %+v; want the 100 MiB segment returned", r.data.ReleasedBytes, u)
				}
			} else if r.data.ReleasedBytes != 0 || u.ReclaimableBytes < 100*MiB {
				t.Errorf("auto-release off: event released %d bytes, reclaimable %d; want the cache kept", r.data.ReleasedBytes, u.ReclaimableBytes)
			}
			checkLedger(t, nc, h, "n1-gpu0", 0)
		})
	}
}

func TestUnavailableDeviceAnswersWithAClearError(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	h.unavailable(t, 0, true)
	callErr(t, nc, subjects.Allocate, "n1-gpu0", []byte(`{"data":{"size_bytes":1024}}`), subjects.CodeDeviceUnavailable)
	callErr(t, nc, subjects.GetUsage, "n1-gpu0", nil, subjects.CodeDeviceUnavailable)
	// The other device keeps serving.
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu1", subjects.AllocateRequest{SizeBytes: 1024}, &a)
	h.unavailable(t, 0, false)
	checkLedger(t, nc, h, "n1-gpu0", 0)
}

func TestInjectedAllocationFailureIsOutOfMemory(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1")
	nc := connect(t, srv)
	h.faults(t).FailAllocs(0, 2) // the first try and the retry after releasing the cache
	r := callErr(t, nc, subjects.Allocate, "n1-gpu0", []byte(`{"data":{"size_bytes":1024}}`), subjects.CodeOutOfMemory)
	if r.ErrorMessage == "" {
		t.Error("no message")
	}
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 1024}, &a)
	checkLedger(t, nc, h, "n1-gpu0", 0)
}
