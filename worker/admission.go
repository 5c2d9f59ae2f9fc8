package worker

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/replay"
)

// The admission queue is the ledger's: it decides which waiter is granted
// or refused, and when. The shell keeps, for each waiting request (a
// ledger.Ticket), the NATS requests to answer — the first and its retries —
// and answers the ledger's decisions.

// queued is the error of an allocate that waits: its reply comes later.
type queued struct{ ticket ledger.Ticket }

func (queued) Error() string { return "queued" }

// errQueued: the request waits; it gets its reply later.
var errQueued = errors.New("queued")

// pending is a waiting request's tickets to answer.
type pending struct {
	reqs      []micro.Request
	op        subjects.Op // allocate, or resize
	id        string      // request_id of the reply
	replayKey replay.Key  // its key in the replay cache; empty without a request_id
	data      []byte      // its payload, for the replay cache
	start     time.Time
}

// park keeps req until the ledger decides ticket t. The caller holds g.mu.
func (w *Worker) park(g *gpu, t ledger.Ticket, req micro.Request, p pending) {
	if old, ok := g.waiting[t]; ok {
		old.reqs = append(old.reqs, req) // a retry joins its wait
		return
	}
	p.reqs = []micro.Request{req}
	g.waiting[t] = &p
	w.metrics.waiting.Inc()
	w.watch(g.NextDeadline())
}

// watch makes sure the admission loop wakes by next (zero: nothing to
// watch).
func (w *Worker) watch(next time.Time) {
	if next.IsZero() || next.UnixNano() >= w.wakeAt.Load() {
		return
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// answer sends the ledger's decisions about waiters to their requests, and
// keeps a grant's reply for retries. The caller holds g.mu.
func (w *Worker) answer(g *gpu, ds []ledger.Decision) {
	for _, d := range ds {
		p, ok := g.waiting[d.Ticket]
		if !ok {
			continue
		}
		delete(g.waiting, d.Ticket)
		w.metrics.waiting.Dec()
		w.metrics.waited.Observe(time.Since(p.start).Seconds())
		if d.Err == nil {
			d.Err = w.answerGrant(g, p, d)
		}
		if d.Err != nil {
			for _, r := range p.reqs {
				w.respond(r, p.op, g.ID(), p.id, d.Err, p.start)
			}
		}
	}
}

// answerGrant replies to a granted waiter's requests.
func (w *Worker) answerGrant(g *gpu, p *pending, d ledger.Decision) error {
	rw := newReplyWriter()
	defer rw.release()
	now := time.Now()
	body, err := w.encodeReply(rw, p.id, d.Allocation, tenantUsage(g, d.Who), now, nil)
	if err != nil {
		return err
	}
	if p.replayKey.RequestID != "" {
		g.replays.Store(p.replayKey, p.op, p.data, append([]byte(nil), body...), now)
	}
	for _, r := range p.reqs {
		w.metrics.served(p.op, "", p.start)
		if rerr := r.Respond(body); rerr != nil {
			w.log.Warn("reply to a waiter failed", "device", g.ID(), "request_id", clipArg(p.id), "err", rerr)
		}
	}
	return nil
}

// admit lets the ledger examine g (ledger.Device.Step) and carries out
// what it decided: replies to waiters, asks to holders, events. It reports
// whether a waiter was granted. The caller holds g.mu.
func (w *Worker) admit(g *gpu, now time.Time) bool {
	r := g.Step(context.Background(), now)
	w.watch(r.Next)
	w.returned(g, r.Released, r.ReleaseErr, slog.LevelDebug, "its cache hold ended")
	w.answer(g, r.Decisions)
	for _, e := range r.Events {
		w.announceHandoff(g, e, now)
	}
	for _, a := range r.Asks {
		w.asks.Go(func() { w.ask(g, a) })
	}
	for _, d := range r.Decisions {
		if d.Err == nil {
			return true
		}
	}
	return false
}

// runAdmission frees the leases that ended and ends the waits whose
// deadline has passed, on every device, at the next deadline or when an
// earlier one comes, until stop is closed; then it refuses every waiter
// left.
func (w *Worker) runAdmission(stop <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		// Any watch while the deadlines are read wakes the loop again: a
		// waiter parked on one device while another's lock is awaited
		// would be missed otherwise.
		w.wakeAt.Store(math.MaxInt64)
		next := time.Time{}
		for _, g := range w.gpus {
			g.mu.Lock()
			if d := g.NextDeadline(); !d.IsZero() && (next.IsZero() || d.Before(next)) {
				next = d
			}
			g.mu.Unlock()
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		w.wakeAt.Store(time.Now().Add(wait).UnixNano())
		t.Reset(wait)
		select {
		case <-t.C:
			for _, g := range w.gpus {
				w.expire(g, time.Now())
				g.mu.Lock()
				if w.admit(g, time.Now()) {
					w.recheck(g)
				}
				g.mu.Unlock()
			}
		case <-w.wake:
		case <-stop:
			for _, g := range w.gpus {
				g.mu.Lock()
				w.answer(g, g.Stop(time.Now()))
				g.mu.Unlock()
			}
			return
		}
	}
}
