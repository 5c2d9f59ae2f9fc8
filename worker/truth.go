package worker

import (
	"context"
	"sync/atomic"
	"time"
)

// truthReader keeps a device's reading of device truth fresh while
// requests use it, so that they find it not yet due and do not wait on the
// driver: a reading is a driver round trip (cuMemGetInfo through cgo,
// 9-26 µs on an H100 host met cold between requests), taken by whichever
// request found the reading due, once every --truth-max-age (1 ms). The
// reader takes it instead, ahead of time, without the device's lock. It
// sleeps while nothing uses the device's truth: an idle worker does not
// wake for it. Requests never depend on it: one that finds the reading due
// takes it, as before.
type truthReader struct {
	// idle is set while the reader waits to be woken; a request that finds
	// it set wakes it.
	idle atomic.Bool
	wake chan struct{}
}

func newTruthReader() *truthReader { return &truthReader{wake: make(chan struct{}, 1)} }

// used wakes the reader when it sleeps: a request uses the device.
func (r *truthReader) used() {
	if r.idle.Load() && r.idle.CompareAndSwap(true, false) {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// keepTruth is g's reader (truthReader) until ctx ends: each cycle it
// reads the driver at three quarters of --truth-max-age, and stops once a
// cycle went by in which nothing used the reading. A reading is put only
// when nothing changed the device while the driver was asked (deviceMu's
// count): it must be paired with the pool's reservation at its moment.
// While mutations change the device (each reads truth again when due, and
// would make the reader's reading void), it does not ask the driver.
func (w *Worker) keepTruth(ctx context.Context, g *gpu) {
	every := w.cfg.TruthMaxAge * 3 / 4
	timer := time.NewTimer(every)
	timer.Stop()
	defer timer.Stop()
	r := g.truth
	for {
		r.idle.Store(true)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		var last uint64
		for woken := true; ; woken = false {
			g.mu.Lock()
			used, reserved := g.TruthUse()
			changes := g.mu.changes
			g.mu.unlockRead()
			if !used && !woken {
				break
			}
			if woken || changes == last {
				at := time.Now()
				if mi, err := w.cfg.Backend.MemInfo(ctx, g.Index()); err == nil { // a failure is the next request's to read and report
					g.mu.Lock()
					if g.mu.changes == changes {
						g.PutTruth(at, mi, reserved)
					}
					g.mu.unlockRead()
				}
			}
			last = changes
			timer.Reset(every)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
	}
}
