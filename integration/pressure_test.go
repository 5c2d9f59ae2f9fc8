package integration

import (
	"testing"

	"github.com/memworker/memworker/subjects"
)

// TestPressureFollowsDeviceTruth drives a device over and under the
// thresholds with allocations and with other processes' use.
func TestPressureFollowsDeviceTruth(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
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
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	call(t, nc, subjects.Clear, dev, nil, nil)
	if p := level(); p.Level != subjects.LevelNormal || p.PreviousLevel != subjects.LevelWarning {
		t.Errorf("after freeing: %+v, want normal after warning (the freed block stayed cached until clear)", p)
	}
	checkLedger(t, nc, h, dev, 0)
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
