package worker

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// ops are the operations and their handlers. Each is thin: the device's
// lock is held (dispatch.go), the ledger acts, and the reads that observe
// pressure announce what they find.
func (w *Worker) ops() map[subjects.Op]opFunc {
	return map[subjects.Op]opFunc{
		subjects.GetStatus:        typed(w.getStatus),
		subjects.GetUsage:         typed(w.getUsage),
		subjects.GetAllocations:   typed(getAllocations),
		subjects.Allocate:         typed(allocate),
		subjects.Deallocate:       typed(deallocate),
		subjects.Clear:            typed(clearDevice),
		subjects.Defragment:       typed(defragment),
		subjects.Transfer:         typed(w.transfer),
		subjects.GetTransfer:      typed(w.getTransfer),
		subjects.Optimize:         typed(optimize),
		subjects.ModelStatus:      typed(modelStatus),
		subjects.ModelOptimize:    typed(modelOptimize),
		subjects.GetPressure:      typed(w.getPressure),
		subjects.Analytics:        typed(analytics),
		subjects.OptimizationRecs: typed(w.optimizationRecs),
		subjects.Renew:            typed(renew),
		subjects.Resize:           typed(resize),
	}
}

func getAllocations(ctx context.Context, g *gpu, call ledger.Call, req *subjects.AllocationsRequest) (any, error) {
	return g.Allocations(ctx, call, req), nil
}

// allocate asks the ledger for memory; a request that waits for room
// gets its reply when the ledger decides (admission.go).
func allocate(ctx context.Context, g *gpu, call ledger.Call, req *subjects.AllocateRequest) (any, error) {
	a, ticket, err := g.Allocate(ctx, call, req)
	if ticket != 0 {
		return nil, queued{ticket}
	}
	return a, err
}

func deallocate(_ context.Context, g *gpu, call ledger.Call, req *subjects.DeallocateRequest) (any, error) {
	return g.Deallocate(req, call.Who)
}

func clearDevice(ctx context.Context, g *gpu, call ledger.Call, req *subjects.ClearRequest) (any, error) {
	return g.Clear(ctx, req, call.Who)
}

// defragment compacts a segment at a time and lets the device's other
// requests in between: it is called holding g.mu (act), which it lets go
// and takes again after each step.
func defragment(ctx context.Context, g *gpu, _ ledger.Call, _ *subjects.DefragmentRequest) (any, error) {
	return g.Defragment(ctx, func() {
		g.mu.Unlock()
		runtime.Gosched()
		g.mu.Lock()
	})
}

func optimize(ctx context.Context, g *gpu, _ ledger.Call, req *subjects.OptimizeRequest) (any, error) {
	return g.Optimize(ctx, req)
}

func modelStatus(_ context.Context, g *gpu, call ledger.Call, req *subjects.ModelStatusRequest) (any, error) {
	return g.ModelStatus(req, call.Who), nil
}

func modelOptimize(ctx context.Context, g *gpu, call ledger.Call, req *subjects.ModelOptimizeRequest) (any, error) {
	return g.ModelOptimize(ctx, call, req)
}

func renew(_ context.Context, g *gpu, call ledger.Call, req *subjects.RenewRequest) (any, error) {
	return g.Renew(req, call.Who, call.Now)
}

func resize(ctx context.Context, g *gpu, call ledger.Call, req *subjects.ResizeRequest) (any, error) {
	a, ticket, err := g.Resize(ctx, call, req)
	if ticket != 0 {
		return nil, queued{ticket}
	}
	return a, err
}

func analytics(_ context.Context, g *gpu, call ledger.Call, req *subjects.AnalyticsRequest) (any, error) {
	return g.Analytics(req, call.Who), nil
}

// current reads g's usage at now and observes its pressure.
func (w *Worker) current(ctx context.Context, g *gpu, now time.Time) (subjects.Usage, subjects.Pressure, error) {
	u, err := g.Usage(ctx, now.UTC())
	if err != nil {
		return u, subjects.Pressure{}, err
	}
	u.PinnedPool = w.pinnedPool()
	return u, w.observe(g, u), nil
}

func (w *Worker) getUsage(ctx context.Context, g *gpu, call ledger.Call, _ *subjects.UsageRequest) (any, error) {
	u, _, err := w.current(ctx, g, call.Now)
	if err != nil {
		return nil, err
	}
	g.AddTelemetry(ctx, &u)
	u = g.WithPurposes(u, call.Who)
	return &u, nil // a pointer: its reply's encoding can be kept (reply.go)
}

func (w *Worker) getPressure(ctx context.Context, g *gpu, call ledger.Call, _ *subjects.PressureRequest) (any, error) {
	_, p, err := w.current(ctx, g, call.Now)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (w *Worker) getStatus(ctx context.Context, g *gpu, call ledger.Call, req *subjects.StatusRequest) (any, error) {
	u, p, err := w.current(ctx, g, call.Now)
	if err != nil {
		return nil, err
	}
	return g.Status(ctx, req, u, p, call.Who), nil
}

func (w *Worker) optimizationRecs(ctx context.Context, g *gpu, call ledger.Call, _ *subjects.OptimizationRecsRequest) (any, error) {
	u, p, err := w.current(ctx, g, call.Now)
	if err != nil {
		return nil, err
	}
	return g.Recommendations(u, p), nil
}

// Locate tells where an allocation's bytes are and how many there are, for
// in-process users that reach the backend directly (tests, embedding). The
// location is valid until the allocation is moved, transferred or freed.
func (w *Worker) Locate(deviceID, allocationID string) (device.Location, int64, error) {
	g := w.gpu(deviceID)
	if g == nil {
		return device.Location{}, 0, fmt.Errorf("device %s: %w", deviceID, ledger.ErrDeviceNotFound)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Locate(allocationID)
}
