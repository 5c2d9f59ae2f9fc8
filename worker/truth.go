package worker

import (
	"context"
	"sync"
	"time"
)

// Reading ahead. A reading of device truth is a driver round trip
// (cuMemGetInfo through cgo, 9-26 µs on an H100 host met cold between
// requests), taken by whichever request finds the reading due, once every
// --truth-max-age (1 ms). A read whose reading falls due within the last
// quarter of the max age takes the next one after its reply has gone out:
// at one client the next request comes to a reading not yet due, and the
// driver is asked in the time between requests, on a goroutine started
// for it. No goroutine that waits, no timer: an idle worker does not wake
// for it, and a busy one does not wake every 0.75 ms for it, as the
// reader it replaced did. Requests never depend on it: one that finds the
// reading due takes it, as before.

// truthAhead is what a read found, under the device's lock, for the
// reading it takes after its reply (readAhead).
type truthAhead struct {
	due      bool      // the reading in force falls due within the horizon
	at       time.Time // the read's moment: the reading's
	reserved int64     // the pool's reservation at that moment
	changes  uint64    // the device lock's change count at that moment
}

// aheadHorizon is how soon before a reading falls due a read takes the
// next one, a quarter of maxAge; ok is false below minAheadAge, where
// requests read the driver nearly every time anyway and none is taken
// ahead.
func aheadHorizon(maxAge time.Duration) (horizon time.Duration, ok bool) {
	return maxAge / 4, maxAge >= minAheadAge
}

const minAheadAge = 200 * time.Microsecond

// dueAhead says whether a read at now should take the next reading after
// its reply. The caller holds g.mu.
func (w *Worker) dueAhead(g *gpu, now time.Time) truthAhead {
	horizon, ok := aheadHorizon(w.cfg.TruthMaxAge)
	if !ok || !g.TruthDue(now.Add(horizon)) {
		return truthAhead{}
	}
	return truthAhead{due: true, at: now, reserved: g.ReservedBytes(), changes: g.mu.changes}
}

// readAhead takes the reading a read found falling due (dueAhead), after
// the read's reply went out, on a goroutine of its own (w.aheads): the
// handler's goroutine goes back to its subscription at once, and its
// reply's flush is not held behind a driver call on the same P. One
// reading ahead at a time per device. The reading is put only when
// nothing changed the device since the read (the lock's change count): it
// must be paired with the pool's reservation of the read's moment. A
// failure is the next request's to read and report.
func (w *Worker) readAhead(ctx context.Context, g *gpu, a truthAhead) {
	if !a.due || !g.readingAhead.CompareAndSwap(false, true) {
		return
	}
	if !w.aheads.Go(func() {
		defer g.readingAhead.Store(false)
		mi, err := w.cfg.Backend.MemInfo(ctx, g.Index())
		if err != nil {
			return
		}
		g.mu.Lock()
		if g.mu.changes == a.changes {
			g.PutTruth(a.at, mi, a.reserved)
		}
		g.mu.unlockRead()
	}) {
		g.readingAhead.Store(false)
	}
}

// aheads owns the goroutines that take readings ahead: Close, at the
// stop, waits for them and starts no more (a handler still answering
// past the drain's timeout may ask for one).
type aheads struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// Go runs f on a goroutine of its own, unless closed.
func (r *aheads) Go(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Go(f)
	return true
}

// Close starts no more and waits for those running.
func (r *aheads) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}
