package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// Brokered handoff. An allocation with a reclaim spec is a holder: when the
// first waiter for room cannot fit, holders of strictly lower priority that
// can cover its shortfall are asked (the fewest needed, lowest priority and
// least recently used first) to give memory back down to their keep_bytes;
// the ledger verifies that they did (the allocation freed, or resized to
// keep_bytes and, for a process, NVML showing it there) before the room
// counts, and asks them to take it again (restore, through the door) when
// no waiter above them needs it. Handoff returns the asks and the events as
// data; the shell sends them.

// Handoff defaults.
const (
	DefaultReclaimTimeout   = 30 * time.Second
	DefaultReclaimTolerance = 64 << 20
	// VerifyEvery is how often a release that the ledger already shows is
	// checked against NVML until it holds: a model server's sleep returns
	// before the driver has its memory back, and the waiter should not
	// wait a whole TelemetryMaxAge for the next look.
	VerifyEvery = 50 * time.Millisecond
)

// holder is a holder's standing.
type holder struct {
	spec     subjects.Reclaim
	priority int
	state    string // subjects.HolderHeld, HolderReleasing, HolderReleased
	full     int64  // its size when asked to release: what restore gives back
	wanted   int64
	asked    time.Time
	deadline time.Time
	answered bool
	refused  error
	// answeredAt is when its answer came (or the ledger first showed the
	// release); verifyAt when NVML is to be looked at again.
	answeredAt, verifyAt time.Time
	// rest: not asked again before it (after a failed release).
	rest time.Time
	// gen counts the releases asked of it; lent is what claims above its
	// priority have borrowed of the room it gave up in this one (owed.go).
	gen  uint64
	lent int64
}

// Ask is a request the shell sends to a holder.
type Ask struct {
	Action string // subjects.ActionRelease or ActionRestore
	Holder subjects.Allocation
	Spec   subjects.Reclaim
	Notice subjects.ReclaimNotice
}

// HandoffEvent is something to announce about a holder.
type HandoffEvent struct {
	Type   string // HandoffRequested, ...
	Holder subjects.Allocation
	// WaiterPriority is the priority of the waiter it was asked for;
	// BytesWanted and Deadline what it was asked; BytesReleased what it
	// gave back; Seconds from the ask to the holder's answer (or to its
	// allocation freed), VerifySeconds from then to the release seen in
	// the ledger and by NVML; Reason why a release failed.
	WaiterPriority int
	BytesWanted    int64
	BytesReleased  int64
	Deadline       time.Time
	Seconds        float64
	VerifySeconds  float64
	Reason         string
	asked          time.Time // a freed holder's ask, for Seconds
}

// The kinds of HandoffEvent, and the reasons of a failed release.
const (
	HandoffRequested = "requested"
	HandoffCompleted = "completed"
	HandoffFailed    = "failed"
	HandoffRestored  = "restored"

	ReasonTimeout     = "timeout"
	ReasonRefused     = "refused"
	ReasonNotVerified = "not_verified"
)

// held is a's holder standing, nil when a holds nothing for a waiter.
func (a *allocation) holding() *holder {
	if a.extra == nil {
		return nil
	}
	return a.extra.hold
}

// Ready is what examining the device decided, for the shell to carry
// out: replies to waiters, asks to holders, events to announce.
type Ready struct {
	Decisions []Decision
	Asks      []Ask
	Events    []HandoffEvent
	// Released is the cached memory given back to the device (ReturnCache),
	// ReleaseErr a failure doing so.
	Released   int64
	ReleaseErr error
	// Next is when the device is to be examined again (NextDeadline).
	Next time.Time
}

// Step examines the device as of now: the queue (Admit), then the holders
// (Handoff); a release verified there makes room, so the queue is
// examined once more.
func (d *Device) Step(ctx context.Context, now time.Time) Ready {
	var r Ready
	for range 2 {
		if len(d.queue.waiters) > 0 {
			// Released holders no waiter above them needs grow back first:
			// room they gave up for a higher waiter is not a lower one's
			// to take once that waiter is gone.
			if len(d.holders) > 0 {
				asks, evs := d.restoreHolders(ctx, d.headWaiter(now), now)
				r.Asks, r.Events = append(r.Asks, asks...), append(r.Events, evs...)
			}
			r.Decisions = append(r.Decisions, d.Admit(ctx, now)...)
		}
		asks, evs, grew := d.Handoff(ctx, now)
		r.Asks, r.Events = append(r.Asks, asks...), append(r.Events, evs...)
		if !grew {
			break
		}
		d.settle = now.Add(d.cfg.ReclaimTimeout)
	}
	// A release the ledger has seen may reach the device's free bytes a
	// little later (a process still exiting): until the waiter it was for
	// is granted, or the reclaim timeout, the queue is looked at again
	// every VerifyEvery.
	d.settleAt = time.Time{}
	if now.Before(d.settle) && d.headWaiter(now) != nil {
		d.settleAt = now.Add(VerifyEvery)
	}
	r.Released, r.ReleaseErr = d.returnCache(ctx, now)
	r.Next = d.NextDeadline()
	return r
}

// Answered records a holder's answer to a release: err is its refusal (an
// error reply, an HTTP error, no answer). The release still has to be
// verified.
func (d *Device) Answered(id string, err error, now time.Time) {
	a, ok := d.get(id)
	if !ok {
		return
	}
	if h := a.holding(); h != nil && h.state == subjects.HolderReleasing {
		h.answered, h.refused = true, err
		if h.answeredAt.IsZero() {
			h.answeredAt = now
		}
	}
}

// Handoff re-examines the holders as of now: it verifies the releases
// asked, fails those past their deadline, asks the holders a waiter needs,
// and restores those no waiter above them needs. grew tells whether
// room grew (a release verified): the queue is worth examining again.
func (d *Device) Handoff(ctx context.Context, now time.Time) (asks []Ask, evs []HandoffEvent, grew bool) {
	if len(d.holders) == 0 && len(d.freedHolders) == 0 {
		return nil, nil, false
	}
	for _, e := range d.freedHolders {
		// Freed while asked: released in full.
		e.Seconds = now.Sub(e.asked).Seconds()
		evs = append(evs, e)
		grew = true
	}
	d.freedHolders = d.freedHolders[:0]
	// A release is verified on a reading taken after the holder answered,
	// and looked at again every VerifyEvery until it holds.
	maxAge := d.cfg.TelemetryMaxAge
	if since := d.verifyingSince(now); !since.IsZero() {
		maxAge = VerifyEvery
		if d.tele.at == nil || d.tele.at.Before(since) {
			maxAge = 0
		}
	}
	d.readTelemetryWithin(ctx, now, maxAge)
	var releasing int64
	for _, a := range d.holders {
		h := a.holding()
		if h.state != subjects.HolderReleasing {
			continue
		}
		switch {
		case d.releasedTo(a, h.spec.KeepBytes):
			// The room it made is read from the device, not assumed.
			d.forgetTruth(now)
			h.state = subjects.HolderReleased
			evs = append(evs, HandoffEvent{Type: HandoffCompleted, Holder: d.view(a), BytesReleased: h.full - a.size,
				Seconds: h.answeredAt.Sub(h.asked).Seconds(), VerifySeconds: now.Sub(h.answeredAt).Seconds()})
			grew = true
		case h.refused != nil || !now.Before(h.deadline):
			reason := ReasonTimeout
			switch {
			case h.refused != nil:
				reason = ReasonRefused + ": " + h.refused.Error()
			case h.answered:
				reason = ReasonNotVerified
			}
			d.endRelease(a)
			h.rest = now.Add(d.cfg.ReclaimTimeout)
			evs = append(evs, HandoffEvent{Type: HandoffFailed, Holder: d.view(a), BytesWanted: h.wanted, Reason: reason})
		default:
			releasing += h.wanted
			if !h.answeredAt.IsZero() {
				h.verifyAt = now.Add(VerifyEvery)
			}
		}
	}
	head := d.headWaiter(now)
	if _, shut := d.closed(now); head != nil && shut == nil { // a closed door would grant nothing for the release
		a, e := d.askHolders(ctx, head, releasing, now)
		asks, evs = append(asks, a...), append(evs, e...)
	}
	a, e := d.restoreHolders(ctx, head, now)
	return append(asks, a...), append(evs, e...), grew
}

// releasedTo reports whether a holder has given back all but keep: its
// size, and for a reservation with a process, what NVML sees it use.
func (d *Device) releasedTo(a *allocation, keep int64) bool {
	if a.size > keep {
		return false
	}
	if !a.reservation() || a.pid() == 0 {
		return true
	}
	used, _, ok := d.observed(a.pid())
	return ok && used <= keep+d.cfg.ReclaimTolerance
}

// headWaiter is the first waiter held back by room (not by its quota).
func (d *Device) headWaiter(now time.Time) *waiter {
	for _, w := range d.queue.waiters {
		if w.claim().deviceMemory() && !d.overQuota(w.who.Tenant, w.req.SizeBytes) && now.Before(w.deadline) {
			return w
		}
	}
	return nil
}

// askHolders asks the holders that cover the head waiter's shortfall
// (beyond what is available and what releasing holders will give), or
// none when they cannot cover it.
func (d *Device) askHolders(ctx context.Context, head *waiter, releasing int64, now time.Time) ([]Ask, []HandoffEvent) {
	u, err := d.Usage(ctx, now)
	if err != nil {
		return nil, nil
	}
	// Room owed to holders at or above the waiter's priority is not its.
	short := head.req.SizeBytes - (u.AvailableBytes - d.owedTo(head.claim())) - releasing
	if short <= 0 {
		return nil, nil
	}
	var cands []*allocation
	var total int64
	for _, a := range d.holders {
		h := a.holding()
		if h.state != subjects.HolderHeld || h.priority >= head.req.Priority || now.Before(h.rest) || a.size <= h.spec.KeepBytes {
			continue
		}
		cands = append(cands, a)
		total += a.size - h.spec.KeepBytes
	}
	if total < short {
		return nil, nil // asking cannot make room: ask nobody
	}
	// Lowest priority, then least recently used, then the largest (the
	// fewest holders to ask).
	slices.SortFunc(cands, func(x, y *allocation) int {
		return cmp.Or(cmp.Compare(x.holding().priority, y.holding().priority), cmp.Compare(x.lastUsed, y.lastUsed),
			cmp.Compare(y.size-y.holding().spec.KeepBytes, x.size-x.holding().spec.KeepBytes), cmp.Compare(x.created, y.created))
	})
	var asks []Ask
	var evs []HandoffEvent
	for _, a := range cands {
		if short <= 0 {
			break
		}
		h := a.holding()
		h.state, h.full, h.wanted, h.asked = subjects.HolderReleasing, a.size, a.size-h.spec.KeepBytes, now
		h.deadline, h.answered, h.refused = now.Add(d.cfg.ReclaimTimeout), false, nil
		h.answeredAt, h.verifyAt = time.Time{}, time.Time{}
		h.gen, h.lent = h.gen+1, 0
		short -= h.wanted
		v := d.view(a)
		asks = append(asks, Ask{Action: subjects.ActionRelease, Holder: v, Spec: h.spec,
			Notice: subjects.ReclaimNotice{AllocationID: v.AllocationID, DeviceID: d.id, BytesWanted: h.wanted, Deadline: h.deadline}})
		evs = append(evs, HandoffEvent{Type: HandoffRequested, Holder: v, WaiterPriority: head.req.Priority,
			BytesWanted: h.wanted, Deadline: h.deadline})
	}
	return asks, evs
}

// restoreHolders gives released holders their memory back, highest
// priority first, through the door, unless a waiter above them still
// needs room.
func (d *Device) restoreHolders(ctx context.Context, head *waiter, now time.Time) ([]Ask, []HandoffEvent) {
	var released []*allocation
	for _, a := range d.holders {
		if h := a.holding(); h.state == subjects.HolderReleased && (head == nil || head.req.Priority <= h.priority) {
			released = append(released, a)
		}
	}
	slices.SortFunc(released, func(x, y *allocation) int { return cmp.Compare(y.holding().priority, x.holding().priority) })
	var asks []Ask
	var evs []HandoffEvent
	for _, a := range released {
		h := a.holding()
		if grow := h.full - a.size; grow > 0 {
			if !a.reservation() {
				continue // a VRAM holder allocates again itself
			}
			// First in the queue of its priority: a waiter of its priority
			// that the owed room holds back must not hold it back in turn.
			c := claim{tenant: a.tenant, size: grow, quota: grow, kind: kindNone, priority: h.priority, self: a, seq: 1, restore: true}
			if _, err := d.door(ctx, c, now); err != nil {
				if errors.Is(err, ErrQuotaExceeded) {
					// Its tenant took the room for something else: nothing
					// stays owed to it; it grows, when it can, by resize.
					d.endRelease(a)
				}
				continue
			}
			// Its own room, less what others still borrow of it, is its
			// own: only that borrowed part is taken from elsewhere.
			borrowed := min(grow, h.lent)
			d.setSize(a, h.full)
			d.lend(a, h.priority, borrowed)
		}
		h.state = subjects.HolderHeld
		v := d.view(a)
		asks = append(asks, Ask{Action: subjects.ActionRestore, Holder: v, Spec: h.spec,
			Notice: subjects.ReclaimNotice{AllocationID: v.AllocationID, DeviceID: d.id, Deadline: now.Add(d.cfg.ReclaimTimeout)}})
		evs = append(evs, HandoffEvent{Type: HandoffRestored, Holder: v})
	}
	return asks, evs
}

// setSize changes a reservation's size, and its tenant's figures.
func (d *Device) setSize(a *allocation, size int64) {
	if f := d.tenants[a.tenant]; f != nil {
		f.requested += size - a.size
	}
	a.size, a.rsv = size, size
}

// Resize changes a RESERVATION's size: shrinking at once, growing through
// the door (the tenant's quota, reservations, the queue, the room); and
// its process when req names one. A growth that does not fit now waits up
// to wait_seconds in the admission queue (a Ticket, as an allocate of the
// growth at the holder's priority).
func (d *Device) Resize(ctx context.Context, call Call, req *subjects.ResizeRequest) (subjects.Allocation, Ticket, error) {
	if call.RequestID != "" {
		if w := d.queue.find(call.Who, call.RequestID); w != nil {
			if w.resize == nil || *w.resize != *req {
				return subjects.Allocation{}, 0, Errorf(ErrConflict, "request_id %s was already used for a different request", call.RequestID)
			}
			return subjects.Allocation{}, w.ticket, nil
		}
	}
	a, grow, final, err := d.resize(ctx, call, req, 0)
	if err == nil || final || req.WaitSeconds <= 0 || !waits(err) {
		return a, 0, err
	}
	wait := *req
	w := &subjects.AllocateRequest{SizeBytes: grow, AllocationType: subjects.Reservation, Priority: a.Priority, WaitSeconds: req.WaitSeconds}
	t, err := d.enqueueWaiter(call, w, &wait, 0, err)
	return subjects.Allocation{}, t, err
}

// resize is Resize without waiting: the allocation as resized, or as it
// is with the bytes it would grow by and whether its refusal is final. seq
// is its place in the queue when it waited (0: it never did), so that the
// door does not hold it behind itself.
func (d *Device) resize(ctx context.Context, call Call, req *subjects.ResizeRequest, seq uint64) (_ subjects.Allocation, grow int64, final bool, _ error) {
	a, ok := d.get(req.AllocationID)
	if !ok || !a.visibleTo(call.Who) {
		return subjects.Allocation{}, 0, true, fmt.Errorf("allocation %s on %s: %w", req.AllocationID, d.id, ErrAllocationNotFound)
	}
	if !a.reservation() {
		return subjects.Allocation{}, 0, true, Errorf(ErrUnsupported, "allocation %s is %s: only a %s changes size in place", req.AllocationID, a.allocType(), subjects.Reservation)
	}
	if grow = req.SizeBytes - a.size; grow > 0 && req.SizeBytes > d.cfg.Info.TotalBytes {
		return d.view(a), grow, true, fmt.Errorf("%s exceeds the total memory of %s, %s: %w",
			bytesize.Format(req.SizeBytes), d.id, bytesize.Format(d.cfg.Info.TotalBytes), device.ErrOutOfMemory)
	}
	priority := 0
	if h := a.holding(); h != nil {
		priority = h.priority
	}
	if grow > 0 {
		c := claim{tenant: a.tenant, size: grow, quota: grow, kind: kindNone, priority: priority, seq: seq, self: a}
		if final, err := d.door(ctx, c, call.Now); err != nil {
			if final {
				return d.view(a), grow, true, err
			}
			return d.view(a), grow, false, fmt.Errorf("growing %s by %s: %w", req.AllocationID, bytesize.Format(grow), err)
		}
	}
	d.setSize(a, req.SizeBytes)
	switch h := a.holding(); {
	case grow > 0:
		d.lend(a, priority, grow)
	case h == nil || !h.giving():
		d.repay(a, -grow)
		// A holder giving its room back keeps what it borrowed: that room
		// is owed to it now (endRelease repays from what it gave up).
	}
	if req.PID != 0 {
		if a.extra == nil {
			a.extra = &extra{}
		}
		a.extra.pid = req.PID
	}
	a.lastUsed = call.Now.UnixNano()
	return d.view(a), grow, false, nil
}

// holderAllowed refuses a tenant a holder the worker would ask on its
// behalf somewhere else than its own: a tenant's holder listens on a
// subject under holders.<tenant>. (which its account exports to the
// worker's), never at a URL (the worker could not tell whose server it is).
func holderAllowed(spec *subjects.Reclaim, who Who) error {
	if spec == nil || who.Operator() {
		return nil
	}
	prefix := strings.TrimSuffix(subjects.HolderSubjects(who.Tenant), ">")
	if spec.Subject == "" || !strings.HasPrefix(spec.Subject, prefix) {
		return Errorf(ErrForbidden, "a tenant's holder listens on a NATS subject under %s (its account exports them to the worker's); release and restore URLs are the operator's", prefix)
	}
	return nil
}

// hold makes a a holder of spec at priority.
func (d *Device) hold(a *allocation, spec *subjects.Reclaim, priority int) {
	if spec == nil {
		return
	}
	if a.extra == nil {
		a.extra = &extra{}
	}
	a.extra.hold = &holder{spec: *spec, priority: priority, state: subjects.HolderHeld}
	d.holders = append(d.holders, a)
}

// forget takes a freed allocation off the holders; a release asked of it
// is complete (announced by the next Handoff).
func (d *Device) forget(a *allocation) {
	h := a.holding()
	if h == nil {
		return
	}
	d.holders = slices.DeleteFunc(d.holders, func(x *allocation) bool { return x == a })
	if h.state == subjects.HolderReleasing {
		d.freedHolders = append(d.freedHolders, HandoffEvent{Type: HandoffCompleted, Holder: d.view(a), BytesReleased: h.full, asked: h.asked})
	}
}

// holderDeadline is the earliest deadline of a release asked.
func (d *Device) holderDeadline() time.Time {
	next := d.settleAt
	for _, a := range d.holders {
		h := a.holding()
		if h.state != subjects.HolderReleasing {
			continue
		}
		for _, t := range [2]time.Time{h.deadline, h.verifyAt} {
			if !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
	}
	return next
}

// verifyingSince is the earliest answer of the releases waiting to be
// verified; zero when none is. A holder shrunk in the ledger to what it
// keeps has answered as of now, if it had not yet.
func (d *Device) verifyingSince(now time.Time) time.Time {
	var since time.Time
	for _, a := range d.holders {
		h := a.holding()
		if h.state != subjects.HolderReleasing {
			continue
		}
		if a.size <= h.spec.KeepBytes && h.answeredAt.IsZero() {
			h.answeredAt = now
		}
		if !h.answeredAt.IsZero() && (since.IsZero() || h.answeredAt.Before(since)) {
			since = h.answeredAt
		}
	}
	return since
}
