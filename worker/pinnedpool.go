package worker

import (
	"context"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/pinned"
)

// newPinnedPool opens the host's pool of page-locked memory, pinning
// --pinned-pool ahead; its cap is --pinned-max, or half the host's memory.
func (w *Worker) newPinnedPool(ctx context.Context) (*pinned.Pool, error) {
	limit := w.cfg.PinnedMax
	if limit == 0 {
		limit = pinned.HostMemory() / 2
	}
	start := time.Now()
	p, err := pinned.New(ctx, w.cfg.Backend, pinned.Config{Prepin: w.cfg.PinnedPool, Max: limit})
	if err != nil {
		return nil, err
	}
	if w.cfg.PinnedPool > 0 {
		w.log.Info("pinned host memory ready", "bytes", bytesize.Format(w.cfg.PinnedPool), "seconds", time.Since(start).Seconds(), "max", bytesize.Format(limit))
	}
	return p, nil
}

// pinnedPool is the pool's state on the wire. Every usage, status and
// pressure reply carries it, and it changes only when an offload or a
// transfer moves host memory: while the figures stay the same, the last
// one is shared (replies only encode it).
func (w *Worker) pinnedPool() *subjects.PinnedPool {
	f := w.pinned.Figures()
	if last := w.pinnedWire.Load(); last != nil && last.f == f {
		return last.wire
	}
	p := &subjects.PinnedPool{
		PinnedBytes: f.PinnedBytes, InUseBytes: f.InUseBytes, CachedBytes: f.CachedBytes,
		PrepinBytes: f.PrepinBytes, MaxBytes: f.MaxBytes, AheadBytes: f.AheadBytes,
	}
	if f.Requests > 0 {
		p.HitRatio = float64(f.Hits) / float64(f.Requests)
	}
	w.pinnedWire.Store(&pinnedWire{f: f, wire: p})
	return p
}

// pinnedWire is the pool's figures and their form on the wire.
type pinnedWire struct {
	f    pinned.Figures
	wire *subjects.PinnedPool
}
