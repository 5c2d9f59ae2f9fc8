package worker

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
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
		subjects.Allocate:         typed(w.allocate),
		subjects.Deallocate:       typed(deallocate),
		subjects.Clear:            typed(clearDevice),
		subjects.Defragment:       operatorOnly(string(subjects.Defragment), w.bounded(typed(defragment))),
		subjects.Transfer:         typed(w.transfer),
		subjects.GetTransfer:      typed(w.getTransfer),
		subjects.Optimize:         operatorOnly(string(subjects.Optimize), w.bounded(typed(optimize))),
		subjects.ModelStatus:      typed(modelStatus),
		subjects.ModelOptimize:    w.bounded(typed(modelOptimize)),
		subjects.GetPressure:      typed(w.getPressure),
		subjects.Analytics:        typed(analytics),
		subjects.OptimizationRecs: typed(w.optimizationRecs),
		subjects.Renew:            typed(renew),
	}
}

func getAllocations(ctx context.Context, g *gpu, req *subjects.AllocationsRequest) (any, error) {
	return g.Allocations(req, caller(ctx)), nil
}

// allocate allocates, made by the request: a retry with the same
// request_id, however late, gets the same allocation (or a conflict when
// it asks for something else), never a second one.
// A wait_seconds that does not fit queues it (admission.go).
func (w *Worker) allocate(ctx context.Context, g *gpu, req *subjects.AllocateRequest) (any, error) {
	var origin ledger.Origin
	if call := g.call; call.idempotent {
		origin = ledger.Origin{RequestID: call.id, Digest: allocateDigest(req)}
	}
	return w.allocateOrWait(ctx, g, req, origin)
}

// allocateDigest sums what an allocate asks for, after validation (so any
// spelling, key order or letter case of the type gives the same sum).
func allocateDigest(r *subjects.AllocateRequest) uint64 {
	var buf [256]byte
	b := strconv.AppendInt(buf[:0], r.SizeBytes, 10)
	b = append(append(b, '|'), r.AllocationType...)
	b = strconv.AppendInt(append(b, '|'), r.Alignment, 10)
	b = strconv.AppendQuote(append(b, '|'), r.Purpose)
	b = strconv.AppendBool(append(b, '|'), r.Persistent)
	b = strconv.AppendQuote(append(b, '|'), r.ModelID)
	b = strconv.AppendFloat(append(b, '|'), r.TTLSeconds, 'g', -1, 64)
	b = strconv.AppendBool(append(b, '|'), r.Export)
	b = strconv.AppendInt(append(b, '|'), int64(r.PID), 10)
	return fnv64a(b)
}

// fnv64a is FNV-1a over b.
func fnv64a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

func deallocate(ctx context.Context, g *gpu, req *subjects.DeallocateRequest) (any, error) {
	return g.Deallocate(req, caller(ctx))
}

func clearDevice(ctx context.Context, g *gpu, req *subjects.ClearRequest) (any, error) {
	return g.Clear(ctx, req, caller(ctx))
}

// defragment compacts a segment at a time and lets the device's other
// requests in between: it is called holding g.mu (act), which it lets go
// and takes again after each step.
func defragment(ctx context.Context, g *gpu, _ *subjects.DefragmentRequest) (any, error) {
	return g.Defragment(ctx, func() {
		g.mu.Unlock()
		runtime.Gosched()
		g.mu.Lock()
	})
}

func optimize(ctx context.Context, g *gpu, req *subjects.OptimizeRequest) (any, error) {
	return g.Optimize(ctx, req)
}

func modelStatus(ctx context.Context, g *gpu, req *subjects.ModelStatusRequest) (any, error) {
	return g.ModelStatus(req, caller(ctx)), nil
}

func modelOptimize(ctx context.Context, g *gpu, req *subjects.ModelOptimizeRequest) (any, error) {
	return g.ModelOptimize(ctx, req, caller(ctx))
}

func renew(ctx context.Context, g *gpu, req *subjects.RenewRequest) (any, error) {
	return g.Renew(req, caller(ctx), time.Now())
}

func analytics(ctx context.Context, g *gpu, req *subjects.AnalyticsRequest) (any, error) {
	return g.Analytics(req, caller(ctx)), nil
}

// current reads g's usage now and observes its pressure.
func (w *Worker) current(ctx context.Context, g *gpu) (subjects.Usage, subjects.Pressure, error) {
	u, err := g.Usage(ctx, time.Now().UTC())
	if err != nil {
		return u, subjects.Pressure{}, err
	}
	u.WaitingRequests, u.WaitingBytes = len(g.queue.waiters), g.queue.bytes
	u.PinnedPool = w.pinnedPool()
	return u, w.observe(g, u), nil
}

func (w *Worker) getUsage(ctx context.Context, g *gpu, _ *subjects.UsageRequest) (any, error) {
	u, _, err := w.current(ctx, g)
	if err != nil {
		return nil, err
	}
	g.AddTelemetry(ctx, &u)
	return g.WithPurposes(u, caller(ctx)), nil
}

func (w *Worker) getPressure(ctx context.Context, g *gpu, _ *subjects.PressureRequest) (any, error) {
	_, p, err := w.current(ctx, g)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (w *Worker) getStatus(ctx context.Context, g *gpu, req *subjects.StatusRequest) (any, error) {
	u, p, err := w.current(ctx, g)
	if err != nil {
		return nil, err
	}
	return g.Status(ctx, req, u, p, caller(ctx)), nil
}

func (w *Worker) optimizationRecs(ctx context.Context, g *gpu, _ *subjects.OptimizationRecsRequest) (any, error) {
	u, p, err := w.current(ctx, g)
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
