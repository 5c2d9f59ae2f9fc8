package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// The one door. Every grant of memory on the device (an allocate, a
// reservation, a waiter's grant, a transfer's destination, the restore of
// an offloaded model) passes door, which applies in this order: the
// tenant's quota, other processes' unused reservations, the admission
// queue, and, for a reservation, the device's room (the other kinds take
// their room from a pool right after, and fail there when there is none).
// Nothing else decides whether memory may be granted. While the device's
// gate is closed (its node's lease not confirmed) the door grants nothing.

// Call is who asks the ledger for something, and when: every operation
// that acts for a client takes one.
type Call struct {
	Who Who
	// Now is the time of the request: the ledger reads no clock of its
	// own for what it decides.
	Now time.Time
	// RequestID is the client's request_id when it gave one: the request
	// is then idempotent by it.
	RequestID string
}

// claim is a request for memory at the door.
type claim struct {
	tenant string
	// size is the bytes asked for; quota those of them that count against
	// the tenant's quota (size_bytes of VRAM and reservations: 0 for host
	// memory, and for a restore, whose bytes are counted already).
	size, quota int64
	kind        device.Kind
	priority    int
	// entry: the grant adds a ledger entry (a restore does not).
	entry bool
	// seq is the waiter's place in the queue when a waiter asks, 0 for a
	// newcomer (behind every waiter of its priority).
	seq uint64
	// self is the allocation that grows, when the claim is a growth (a
	// resize, a holder's restore): not held back by what it is owed itself.
	self *allocation
	// restore: the claim is a released holder's restore (restoreHolders).
	restore bool
}

// deviceMemory reports whether the claim takes device memory (VRAM or a
// reservation): host memory neither counts against quotas nor waits.
func (c claim) deviceMemory() bool { return c.kind != device.Pinned }

// door applies the rules to c. final is true when c can never pass (it is
// larger than the device or than its tenant's whole quota): it is refused
// at once, never queued.
func (d *Device) door(ctx context.Context, c claim, now time.Time) (final bool, err error) {
	if err := d.possible(c); err != nil {
		return true, err
	}
	if final, err := d.closed(now); err != nil {
		return final, err
	}
	if c.quota > 0 {
		if q, ok := d.quota(c.tenant); ok {
			if held := d.held(c.tenant); held+c.quota > q {
				return false, Errorf(ErrQuotaExceeded, "tenant %s holds %s on %s; %s more would pass its quota of %s",
					c.tenant, bytesize.Format(held), d.id, bytesize.Format(c.quota), bytesize.Format(q))
			}
		}
	}
	if n := d.cfg.MaxAllocations; c.entry && n > 0 && len(d.allocs) >= n {
		return false, fmt.Errorf("%s holds %d allocations, the most it keeps (--max-allocations); free some first: %w",
			d.id, n, device.ErrOutOfMemory)
	}
	if !c.deviceMemory() {
		return false, nil
	}
	// Memory promised to reservations is nobody else's: a reservation, or
	// VRAM while reservations exist, must fit what is available. (A
	// reservation's room is this too: the worker allocates nothing for it.)
	if c.kind == kindNone || d.byType[reservationCode] > 0 {
		u, err := d.Usage(ctx, now)
		if err != nil {
			return false, err
		}
		if c.size > u.AvailableBytes {
			return false, fmt.Errorf("%s do not fit %s: %s available (%s promised to reservations): %w",
				bytesize.Format(c.size), d.id, bytesize.Format(u.AvailableBytes), bytesize.Format(u.ReservationUnusedBytes), device.ErrOutOfMemory)
		}
	}
	// Room a released holder of this priority or above gave up, and that
	// no claim above it has borrowed, is the holder's to take back (owed.go).
	if owed := d.owedTo(c); owed > 0 {
		u, err := d.Usage(ctx, now)
		if err != nil {
			return false, err
		}
		if c.size > u.AvailableBytes-owed {
			return false, fmt.Errorf("%s do not fit %s: %s available, of which %s is owed to holders that released it for a higher priority than %d: %w",
				bytesize.Format(c.size), d.id, bytesize.Format(u.AvailableBytes), bytesize.Format(owed), c.priority, device.ErrOutOfMemory)
		}
	}
	if n := d.queue.blocking(c, now, d.cfg.StarvationGuard, d.overQuota); n > 0 {
		return false, fmt.Errorf("%s waiting on %s for longer than %s ahead of this request: it waits behind them (wait_seconds) or tries later: %w",
			requests(n), d.id, d.cfg.StarvationGuard, device.ErrOutOfMemory)
	}
	return false, nil
}

// Gate says whether a device may grant memory at now: nil, or why not
// (a client reads it). The worker's gate is closed while its node's lease
// is not confirmed: another worker may be about to serve the node, and
// two granting from one device's memory would split its ledger.
type Gate interface {
	Closed(now time.Time) error
}

// closed refuses every grant while the gate is closed, with ErrPaused:
// requests that would be granted memory are refused, or wait
// (wait_seconds), waiters wait, and no holder is asked to release for
// them; frees, renewals and reads go on. A gate closed for good (its
// reason a device.ErrUnavailable: the worker gave the node up) refuses
// as final, and nothing waits for it.
func (d *Device) closed(now time.Time) (final bool, err error) {
	if d.cfg.Gate == nil {
		return false, nil
	}
	why := d.cfg.Gate.Closed(now)
	switch {
	case why == nil:
		return false, nil
	case errors.Is(why, device.ErrUnavailable):
		return true, fmt.Errorf("%s grants no memory: %w", d.id, why)
	}
	return false, fmt.Errorf("%s grants no memory for now: %v; frees, renewals and reads go on: retry: %w", d.id, why, ErrPaused)
}

// possible refuses a claim that no wait can grant.
func (d *Device) possible(c claim) error {
	if c.deviceMemory() && c.size > d.cfg.Info.TotalBytes {
		return fmt.Errorf("%s exceeds the total memory of %s, %s: %w",
			bytesize.Format(c.size), d.id, bytesize.Format(d.cfg.Info.TotalBytes), device.ErrOutOfMemory)
	}
	if q, ok := d.quota(c.tenant); ok && c.quota > q {
		return Errorf(ErrQuotaExceeded, "%s is more than tenant %s's whole quota on %s, %s",
			bytesize.Format(c.quota), c.tenant, d.id, bytesize.Format(q))
	}
	return nil
}

// held is what tenant holds against its quota.
func (d *Device) held(tenant string) int64 {
	if f := d.tenants[tenant]; f != nil {
		return f.requested
	}
	return 0
}

// overQuota reports whether a claim of the tenant's for n more bytes would
// pass its quota now.
func (d *Device) overQuota(tenant string, n int64) bool {
	q, ok := d.quota(tenant)
	return ok && d.held(tenant)+n > q
}

// requests says how many requests, in the singular for one.
func requests(n int) string {
	if n == 1 {
		return "1 request is"
	}
	return strconv.Itoa(n) + " requests are"
}

// allocateClaim is the claim of an allocate request by who.
func allocateClaim(req *subjects.AllocateRequest, who Who) claim {
	c := claim{tenant: who.Tenant, size: req.SizeBytes, kind: KindOf(req.AllocationType), priority: req.Priority, entry: true}
	if c.deviceMemory() {
		c.quota = req.SizeBytes
	}
	return c
}
