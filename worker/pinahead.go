package worker

import (
	"context"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
)

// Pinning ahead (--pinned-ahead). Page-locking fresh host memory is what
// makes a cold offload slow; the moment an offload becomes likely is
// known: pressure reaching warning. While a device is at warning or
// above, the host's pinned pool holds ready what an offload of its least
// recently used models would move to bring it back under warning
// (ledger.AheadBytes), all devices together, within --pinned-max; once
// every device is back to normal, the pool gives that memory back.

// aheadEvery is how often a device at warning works out again what to pin
// ahead (its models change while it stays there).
const aheadEvery = time.Second

// wantAhead works out what g wants pinned ahead when its level changed or
// aheadEvery passed, and wakes pinAhead when that changed. The caller
// holds g.mu.
func (w *Worker) wantAhead(g *gpu, u subjects.Usage, p subjects.Pressure, changed bool) {
	if !w.cfg.PinnedAhead || (!changed && u.SampledAt.Sub(g.aheadAt) < aheadEvery) {
		return
	}
	g.aheadAt = u.SampledAt
	want := g.AheadBytes(p)
	if want == g.ahead {
		return
	}
	g.ahead = want
	select {
	case w.aheadWake <- struct{}{}:
	default:
	}
}

// pinAhead keeps the pinned pool holding what the devices want ahead,
// until ctx ends.
func (w *Worker) pinAhead(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.aheadWake:
		}
		var want int64
		for _, g := range w.gpus {
			g.mu.Lock()
			want += g.ahead
			g.mu.Unlock()
		}
		start := time.Now()
		if want == 0 {
			if err := w.pinned.Behind(ctx); err != nil {
				w.log.Warn("giving back memory pinned ahead", "err", err)
			}
			continue
		}
		if err := w.pinned.Ahead(ctx, want); err != nil {
			w.log.Warn("pinning ahead of an offload", "bytes", bytesize.Format(want), "err", err)
			continue
		}
		w.log.Debug("pinned ahead of an offload", "bytes", bytesize.Format(want), "ready", bytesize.Format(w.pinned.Figures().CachedBytes), "seconds", time.Since(start).Seconds())
	}
}
