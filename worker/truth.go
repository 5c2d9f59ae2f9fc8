package worker

import (
	"context"
	"time"
)

// Reading ahead. A reading of device truth is a driver round trip
// (cuMemGetInfo through cgo, 9-26 µs on an H100 host met cold between
// requests), taken by whichever request finds the reading due, once every
// --truth-max-age (1 ms). A read whose reading falls due within the last
// quarter of the max age takes the next one after its reply has gone out:
// at one client the next request comes to a reading not yet due, and the
// driver is asked in the time between requests, on the handler's own
// goroutine. No goroutine of its own, no timer: an idle worker does not
// wake for it, and a busy one does not wake 1,300 times a second for it
// (the reader that did so cost a 2-core machine 4 % of get_status at 8
// clients, docs/performance.md). Requests never depend on it: one that
// finds the reading due takes it, as before.

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
// the read's reply went out, without the device's lock while the driver
// is asked. One request at a time does it. The reading is put only when
// nothing changed the device since the read (the lock's change count):
// it must be paired with the pool's reservation of the read's moment. A
// failure is the next request's to read and report.
func (w *Worker) readAhead(ctx context.Context, g *gpu, a truthAhead) {
	if !a.due || !g.readingAhead.CompareAndSwap(false, true) {
		return
	}
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
}
