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
	// asked is set by requests, cleared by the reader each cycle: a cycle
	// in which no request came puts the reader to sleep. Only requests
	// set it (the sampler and metrics scrapes use truth too, but nobody
	// waits on them). Set only when clear, so requests on many cores
	// share the flag's cache line read-only.
	asked atomic.Bool
	// idle is set while the reader waits to be woken; a request that finds
	// it set wakes it.
	idle atomic.Bool
	wake chan struct{}
}

func newTruthReader() *truthReader { return &truthReader{wake: make(chan struct{}, 1)} }

// used notes a request, and wakes the reader when it sleeps.
func (r *truthReader) used() {
	if !r.asked.Load() {
		r.asked.Store(true)
	}
	if r.idle.Load() && r.idle.CompareAndSwap(true, false) {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// truthReaderCycle is how far apart a reader's cycles are for readings
// good for maxAge, three quarters of it; ok is false below
// minTruthReaderAge, where requests read the driver nearly every time
// anyway and no reader runs.
func truthReaderCycle(maxAge time.Duration) (every time.Duration, ok bool) {
	return maxAge - maxAge/4, maxAge >= minTruthReaderAge
}

const minTruthReaderAge = 200 * time.Microsecond

// keepTruth is g's reader (truthReader) until ctx ends. Each cycle, three
// quarters of --truth-max-age apart, it reads the driver when the reading
// in force would fall due before the next cycle, and it sleeps once a
// cycle went by with no request. A reading is put only when nothing
// changed the device while the driver was asked (deviceMu's count): it
// must be paired with the pool's reservation at its moment. While
// mutations change the device (each reads truth again when due, and would
// make the reader's reading void), it does not ask the driver.
func (w *Worker) keepTruth(ctx context.Context, g *gpu) {
	every, _ := truthReaderCycle(w.cfg.TruthMaxAge)
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
		for woken := true; r.asked.Swap(false); woken = false {
			now := time.Now()
			g.mu.Lock()
			dueNext, reserved, changes := g.TruthDue(now.Add(every)), g.ReservedBytes(), g.mu.changes
			g.mu.unlockRead()
			if (woken || changes == last) && dueNext {
				if mi, err := w.cfg.Backend.MemInfo(ctx, g.Index()); err == nil { // a failure is the next request's to read and report
					g.mu.Lock()
					if g.mu.changes == changes {
						g.PutTruth(now, mi, reserved)
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
