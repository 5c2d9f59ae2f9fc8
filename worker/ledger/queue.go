package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// The admission queue: an allocate with wait_seconds that cannot be granted
// now waits instead of failing. The ledger keeps the waiters and decides
// their grants and refusals (Admit); the shell keeps, for each Ticket, the
// requests to answer, and does the answering.
//
// The policy is work-conserving: a request that passes the door is granted
// while others wait, unless a waiter of equal or higher priority has waited
// longer than the starvation guard; then requests of equal or lower
// priority wait behind it, so a large waiter is served in bounded time and
// a young one blocks nobody. A waiter held back by its tenant's quota (not
// by room) blocks no other tenant.

// Ticket names a waiting request to the shell.
type Ticket uint64

// Decision is what became of a waiting request: granted (Err nil) or
// refused.
type Decision struct {
	Ticket     Ticket
	Who        Who
	Allocation subjects.Allocation
	Err        error
}

// waiter is an allocate waiting for room, or a reservation's growth
// (resize: req is then an allocate of the growth, for the queue's order and
// room).
type waiter struct {
	ticket             Ticket
	who                Who
	requestID          string
	digest             uint64
	req                *subjects.AllocateRequest
	resize             *subjects.ResizeRequest
	enqueued, deadline time.Time
	seq                uint64
	// lastErr is why it was not granted, for its refusal at the deadline;
	// or, when room is not negative, it did not fit room bytes.
	lastErr error
	room    int64
}

// why is the reason w was not granted.
func (d *Device) why(w *waiter) error {
	if w.room < 0 || errors.Is(w.lastErr, ErrQuotaExceeded) {
		return w.lastErr
	}
	return fmt.Errorf("%s do not fit %s: %s available: %w", bytesize.Format(w.req.SizeBytes), d.id, bytesize.Format(w.room), device.ErrOutOfMemory)
}

func (w *waiter) claim() claim {
	c := allocateClaim(w.req, w.who)
	c.seq = w.seq
	return c
}

// queue is a device's waiters, first to be served first: higher priority,
// then older.
type queue struct {
	waiters  []*waiter
	bytes    int64
	seq      uint64
	byTenant map[string]int
}

func order(a, b *waiter) int {
	return cmp.Or(cmp.Compare(b.req.Priority, a.req.Priority), cmp.Compare(a.seq, b.seq))
}

func (q *queue) push(w *waiter) {
	q.seq++
	w.seq, w.ticket = q.seq, Ticket(q.seq)
	i, _ := slices.BinarySearchFunc(q.waiters, w, order)
	q.waiters = slices.Insert(q.waiters, i, w)
	q.bytes += w.req.SizeBytes
	if q.byTenant == nil {
		q.byTenant = map[string]int{}
	}
	q.byTenant[w.who.Tenant]++
}

func (q *queue) remove(i int) *waiter {
	w := q.waiters[i]
	q.waiters = slices.Delete(q.waiters, i, i+1)
	q.bytes -= w.req.SizeBytes
	if q.byTenant[w.who.Tenant]--; q.byTenant[w.who.Tenant] == 0 {
		delete(q.byTenant, w.who.Tenant)
	}
	return w
}

func (q *queue) find(who Who, requestID string) *waiter {
	for _, w := range q.waiters {
		if w.requestID == requestID && w.who.Tenant == who.Tenant {
			return w
		}
	}
	return nil
}

// blocking counts the waiters that hold c back: ahead of it (of higher
// priority, or of its own and older), waiting since before guard ago, and
// waiting for room (a waiter over its tenant's quota holds back its own
// tenant only).
func (q *queue) blocking(c claim, now time.Time, guard time.Duration, overQuota func(string, int64) bool) int {
	if !c.deviceMemory() {
		return 0
	}
	n := 0
	for _, w := range q.waiters {
		if w.req.Priority < c.priority || (w.req.Priority == c.priority && c.seq != 0 && w.seq >= c.seq) {
			break
		}
		if now.Sub(w.enqueued) < guard || !w.claim().deviceMemory() {
			continue
		}
		if w.who.Tenant != c.tenant && overQuota(w.who.Tenant, w.req.SizeBytes) {
			continue
		}
		n++
	}
	return n
}

// Waiting is how many requests wait on the device, and for how many bytes.
func (d *Device) Waiting() (int, int64) { return len(d.queue.waiters), d.queue.bytes }

// NextDeadline is when the device is next to be examined (Expire, Step):
// a lease ends, the first waiter's wait or holder's time to release ends,
// a release is to be verified again, or cached memory is to go back; zero
// when none.
func (d *Device) NextDeadline() time.Time {
	next := d.holderDeadline()
	for _, t := range []time.Time{d.cacheDeadline(), d.nextExpiry()} {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, w := range d.queue.waiters {
		if next.IsZero() || w.deadline.Before(next) {
			next = w.deadline
		}
	}
	return next
}

// waits reports whether err means "not now": the refusals a wait can
// outlast.
func waits(err error) bool {
	return errors.Is(err, device.ErrOutOfMemory) || errors.Is(err, ErrQuotaExceeded) || errors.Is(err, ErrPaused)
}

// enqueueWaiter puts an allocate (or a resize) that was refused with err
// in the queue, when there is a place for it.
func (d *Device) enqueueWaiter(call Call, req *subjects.AllocateRequest, resize *subjects.ResizeRequest, digest uint64, err error) (Ticket, error) {
	limit := d.cfg.MaxWaiters
	if len(d.queue.waiters) >= limit {
		return 0, fmt.Errorf("%d requests wait on %s, the most it queues (--max-waiters): %w", limit, d.id, ErrOverloaded)
	}
	if t := call.Who.Tenant; t != "" && d.queue.byTenant[t] >= max(1, limit/4) {
		return 0, fmt.Errorf("tenant %s has %d requests waiting on %s, the most a tenant may (a quarter of --max-waiters): %w",
			t, d.queue.byTenant[t], d.id, ErrOverloaded)
	}
	w := &waiter{who: call.Who, requestID: call.RequestID, digest: digest, req: req, resize: resize, enqueued: call.Now,
		deadline: call.Now.Add(time.Duration(req.WaitSeconds * float64(time.Second))), lastErr: err, room: -1}
	d.queue.push(w)
	return w.ticket, nil
}

// Admit re-examines the queue as of now: it refuses the waiters whose wait
// is over, then grants, in order, every waiter that passes the door. The
// shell answers each decision.
func (d *Device) Admit(ctx context.Context, now time.Time) []Decision {
	var out []Decision
	for i := 0; i < len(d.queue.waiters); {
		w := d.queue.waiters[i]
		if now.Before(w.deadline) {
			i++
			continue
		}
		d.queue.remove(i)
		out = append(out, Decision{Ticket: w.ticket, Who: w.who,
			Err: fmt.Errorf("waited %.1f s for room: %w", now.Sub(w.enqueued).Seconds(), d.why(w))})
	}
	// room is what is available to device memory, read once and again
	// after each grant: a waiter larger than it is not tried (trying means
	// asking the pool, which asks the driver).
	room, fresh := int64(0), false
	for i := 0; i < len(d.queue.waiters); {
		w := d.queue.waiters[i]
		d.refreshGrowth(w)
		if !fresh {
			u, err := d.Usage(ctx, now)
			if err != nil {
				break // the device cannot say; the next change tries again
			}
			room, fresh = u.AvailableBytes, true
		}
		if w.claim().deviceMemory() && w.req.SizeBytes > room {
			w.room = room // the reason, formatted only if it is refused
			i++
			continue
		}
		call := Call{Who: w.who, Now: now, RequestID: w.requestID}
		var (
			a     subjects.Allocation
			final bool
			err   error
		)
		if w.resize != nil {
			a, _, final, err = d.resize(ctx, call, w.resize, w.seq)
		} else {
			a, final, err = d.allocate(ctx, call, w.req, w.digest, w.claim())
		}
		if err != nil && !final && waits(err) {
			w.lastErr, w.room = err, -1
			i++
			continue
		}
		d.queue.remove(i)
		if err == nil {
			a.WaitedSeconds = now.Sub(w.enqueued).Seconds()
			fresh = false
		}
		out = append(out, Decision{Ticket: w.ticket, Who: w.who, Allocation: a, Err: err})
	}
	return out
}

// refreshGrowth sets a waiting resize's size to what its allocation needs
// now (0 when it is gone or needs nothing more: it is then tried at once,
// to be granted or refused with the reason).
func (d *Device) refreshGrowth(w *waiter) {
	if w.resize == nil {
		return
	}
	var grow int64
	if a, ok := d.get(w.resize.AllocationID); ok {
		grow = max(w.resize.SizeBytes-a.size, 0)
	}
	d.queue.bytes += grow - w.req.SizeBytes
	w.req.SizeBytes = grow
}

// Stop refuses every waiter: the worker is stopping.
func (d *Device) Stop(now time.Time) []Decision {
	out := make([]Decision, 0, len(d.queue.waiters))
	for len(d.queue.waiters) > 0 {
		w := d.queue.remove(0)
		out = append(out, Decision{Ticket: w.ticket, Who: w.who,
			Err: fmt.Errorf("the worker is stopping after %.1f s of waiting: %w", now.Sub(w.enqueued).Seconds(), device.ErrUnavailable)})
	}
	return out
}
