package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// The admission queue: an allocate with wait_seconds that does not fit now
// (or would pass its tenant's quota) waits for room instead of failing. The
// handler returns at once (the endpoint serves the next request, other
// allocates included); whatever makes room (a free, a lease expiring, a
// process exiting, an offload, auto-release) runs admit, which grants the
// waiters in order while the first fits; the deadline loop fails those
// whose wait is over. Replies to waiters are sent from there.

// errQueued: the request waits; it gets its reply later.
var errQueued = errors.New("queued")

// waiter is an allocate waiting for room on a device.
type waiter struct {
	key      string // tenant and request_id: a retry joins the same wait
	reqs     []micro.Request
	id       string // request_id of the reply
	data     json.RawMessage
	req      *subjects.AllocateRequest
	who      ledger.Who
	enqueued time.Time
	deadline time.Time
	seq      uint64
	lastErr  error // why it did not fit, for its failure at the deadline
}

// waitQueue is a device's waiters, first to be served first: higher
// priority, then older.
type waitQueue struct {
	waiters []*waiter
	bytes   int64
	seq     uint64
}

func waiterOrder(a, b *waiter) int {
	return cmp.Or(cmp.Compare(b.req.Priority, a.req.Priority), a.enqueued.Compare(b.enqueued), cmp.Compare(a.seq, b.seq))
}

func (q *waitQueue) push(w *waiter) {
	q.seq++
	w.seq = q.seq
	i, _ := slices.BinarySearchFunc(q.waiters, w, waiterOrder)
	q.waiters = slices.Insert(q.waiters, i, w)
	q.bytes += w.req.SizeBytes
}

func (q *waitQueue) remove(i int) *waiter {
	w := q.waiters[i]
	q.waiters = slices.Delete(q.waiters, i, i+1)
	q.bytes -= w.req.SizeBytes
	return w
}

func (q *waitQueue) find(key string) *waiter {
	for _, w := range q.waiters {
		if w.key == key {
			return w
		}
	}
	return nil
}

// ahead reports whether a waiter would be served before a new request of
// priority p.
func (q *waitQueue) ahead(p int) bool {
	return len(q.waiters) > 0 && q.waiters[0].req.Priority >= p
}

// waits reports whether err means "no room now": the kinds a wait can
// outlast.
func waits(err error) bool {
	return errors.Is(err, device.ErrOutOfMemory) || errors.Is(err, ledger.ErrQuotaExceeded)
}

// replyKey is the context key of the request a handler serves, so an
// allocate can wait on it.
type replyKey struct{}

// allocateCall is what act tells an allocate about its request.
type allocateCall struct {
	id         string // request_id of the reply
	idempotent bool   // the client gave the request_id
	replayKey  string // its key in the replay cache
	data       json.RawMessage
}

// allocateOrWait allocates, or, when the request may wait and there is no
// room (or waiters are ahead), queues it. The caller holds g.mu.
func (w *Worker) allocateOrWait(ctx context.Context, g *gpu, req *subjects.AllocateRequest, origin ledger.Origin) (any, error) {
	who := caller(ctx)
	call := g.call
	key := ""
	if call.idempotent {
		key = call.replayKey
		if wt := g.queue.find(key); wt != nil {
			if r, ok := ctx.Value(replyKey{}).(micro.Request); ok {
				wt.reqs = append(wt.reqs, r) // a retry joins its wait
				return nil, errQueued
			}
		}
	}
	var err error
	if g.queue.ahead(req.Priority) {
		err = fmt.Errorf("%d requests (%s) wait for room on %s ahead of this one: %w",
			len(g.queue.waiters), bytesize.Format(g.queue.bytes), g.ID(), device.ErrOutOfMemory)
	} else {
		var a subjects.Allocation
		if a, err = g.Allocate(ctx, req, origin, who); err == nil {
			return a, nil
		}
	}
	r, ok := ctx.Value(replyKey{}).(micro.Request)
	if req.WaitSeconds <= 0 || !waits(err) || !ok {
		return nil, err
	}
	now := time.Now()
	g.queue.push(&waiter{
		key: key, reqs: []micro.Request{r}, id: orNewID(call.id), data: call.data, req: req, who: who,
		enqueued: now, deadline: now.Add(time.Duration(req.WaitSeconds * float64(time.Second))), lastErr: err,
	})
	w.metrics.waiting.Inc()
	return nil, errQueued
}

// admit grants g's waiters in order while the first fits. The caller holds
// g.mu. It reports whether it granted any.
func (w *Worker) admit(g *gpu) bool {
	granted := false
	for len(g.queue.waiters) > 0 {
		wt := g.queue.waiters[0]
		ctx := withCaller(context.Background(), wt.who)
		var origin ledger.Origin
		if wt.key != "" {
			origin = ledger.Origin{RequestID: wt.id, Digest: allocateDigest(wt.req)}
		}
		a, err := g.Allocate(ctx, wt.req, origin, wt.who)
		if err != nil && waits(err) {
			wt.lastErr = err
			return granted
		}
		g.queue.remove(0)
		w.metrics.waiting.Dec()
		w.metrics.waited.Observe(time.Since(wt.enqueued).Seconds())
		if err != nil {
			w.answerWaiter(g, wt, nil, err)
			continue
		}
		granted = true
		a.WaitedSeconds = time.Since(wt.enqueued).Seconds()
		w.answerWaiter(g, wt, a, nil)
	}
	return granted
}

// expireWaiters fails g's waiters whose deadline has passed, and (stop)
// every waiter when the worker stops. The caller holds g.mu.
func (w *Worker) expireWaiters(g *gpu, now time.Time, stop bool) {
	for i := 0; i < len(g.queue.waiters); {
		wt := g.queue.waiters[i]
		if !stop && now.Before(wt.deadline) {
			i++
			continue
		}
		g.queue.remove(i)
		w.metrics.waiting.Dec()
		err := fmt.Errorf("waited %.1f s for room: %w", now.Sub(wt.enqueued).Seconds(), wt.lastErr)
		if stop {
			err = fmt.Errorf("the worker is stopping after %.1f s of waiting: %w", now.Sub(wt.enqueued).Seconds(), device.ErrUnavailable)
		}
		w.answerWaiter(g, wt, nil, err)
	}
}

// answerWaiter sends a waiter's reply to every request waiting on it, and
// keeps a success for retries. The caller holds g.mu.
func (w *Worker) answerWaiter(g *gpu, wt *waiter, a any, err error) {
	if err != nil {
		for _, r := range wt.reqs {
			w.respond(r, subjects.Allocate, g.ID(), wt.id, err, wt.enqueued)
		}
		return
	}
	rw := newReplyWriter()
	defer rw.release()
	body, err := w.encodeReply(rw, wt.id, a, tenantUsage(g, wt.who), time.Now())
	if err != nil {
		w.answerWaiter(g, wt, nil, err)
		return
	}
	if wt.key != "" {
		g.replays.store(wt.key, subjects.Allocate, wt.data, append([]byte(nil), body...), time.Now())
	}
	for _, r := range wt.reqs {
		w.metrics.served(subjects.Allocate, "", wt.enqueued)
		if rerr := r.Respond(body); rerr != nil {
			w.log.Warn("reply to a waiter failed", "device", g.ID(), "request_id", clipArg(wt.id), "err", rerr)
		}
	}
}

// runAdmission fails waiters past their deadline, on every device, until
// stop is closed; then it fails every waiter left.
func (w *Worker) runAdmission(stop <-chan struct{}) {
	t := time.NewTicker(admissionTick)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			for _, g := range w.gpus {
				g.mu.Lock()
				w.expireWaiters(g, now, false)
				g.mu.Unlock()
			}
		case <-stop:
			for _, g := range w.gpus {
				g.mu.Lock()
				w.expireWaiters(g, time.Now(), true)
				g.mu.Unlock()
			}
			return
		}
	}
}

// admissionTick is how often deadlines are checked: a waiter fails at most
// this late.
const admissionTick = 20 * time.Millisecond
