package ledger

import (
	"container/heap"
	"errors"
	"slices"
	"time"
)

// Leases expire on a timer, not by polling: the device keeps its leases'
// expiries in a heap, NextDeadline includes the first, and Expire frees
// those due. A lease renewed or freed leaves its old entry behind (an entry
// counts only while its allocation is the device's and still expires at
// that time), dropped when it comes to the top or when such entries
// outnumber the allocations (leaseSet).
//
// Expiries within Config.ExpiryBatch of the previous pass wait for the
// next one, so that a burst of leases ending together is freed (and
// announced) together instead of one pass each.

// expiry is one heap entry: a lease, when it ends (at) and when it is to
// be looked at (due: at, or later for a lease in use), in unix nanoseconds.
type expiry struct {
	at, due int64
	a       *allocation
}

type expiries []expiry

func (h expiries) Len() int           { return len(h) }
func (h expiries) Less(i, j int) bool { return h[i].due < h[j].due }
func (h expiries) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiries) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiries) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = expiry{}
	*h = old[:len(old)-1]
	return e
}

// busyRetry is how soon a lease past its expiry that is in use (a copy
// from or to it runs), or that failed to be freed, is looked at again: the
// end of a copy looks at it at once (unbusy), this is the safety net.
const busyRetry = time.Second

// leaseSet records a's expiry (after it was added, made or renewed). The
// entries it leaves behind (renewed, freed) are dropped when they outnumber
// the device's allocations.
func (d *Device) leaseSet(a *allocation) {
	if a.expires == 0 {
		return
	}
	heap.Push(&d.leases, expiry{a.expires, a.expires, a})
	if len(d.leases) > 2*len(d.allocs)+64 {
		d.leases = slices.DeleteFunc(d.leases, func(e expiry) bool { return !d.current(e) })
		heap.Init(&d.leases)
	}
}

// unbusy ends one use of a by a copy; the last one makes a lease past its
// expiry due at once.
func (d *Device) unbusy(a *allocation) {
	if a.busy--; a.busy == 0 {
		d.leaseSet(a)
	}
}

// current reports whether e is its allocation's expiry still.
func (d *Device) current(e expiry) bool {
	return d.allocs[e.a.id] == e.a && e.a.expires == e.at
}

// nextExpiry is when Expire is next to free a lease (zero: no lease).
func (d *Device) nextExpiry() time.Time {
	for len(d.leases) > 0 && !d.current(d.leases[0]) {
		heap.Pop(&d.leases)
	}
	if len(d.leases) == 0 {
		return time.Time{}
	}
	at := d.leases[0].due
	if !d.lastExpire.IsZero() {
		at = max(at, d.lastExpire.Add(d.cfg.ExpiryBatch).UnixNano())
	}
	return time.Unix(0, at)
}

// Expire frees the allocations whose ttl has passed by now, when a pass is
// due (nextExpiry), and returns them; one in use is freed once idle. An
// error is a ledger that disagrees with its pool, for the log (the other
// expired ones are freed).
func (d *Device) Expire(now time.Time) ([]Expired, error) {
	next := d.nextExpiry()
	if next.IsZero() || now.Before(next) {
		return nil, nil
	}
	d.lastExpire = now
	var out []Expired
	var errs []error
	var retry []*allocation
	for len(d.leases) > 0 && d.leases[0].due <= now.UnixNano() {
		e := heap.Pop(&d.leases).(expiry)
		if !d.current(e) {
			continue
		}
		a := e.a
		if !a.idle() {
			retry = append(retry, a)
			continue
		}
		x := Expired{Allocation: d.view(a), Bytes: a.reserved()}
		if err := d.free(a); err != nil {
			errs = append(errs, err)
			retry = append(retry, a)
			continue
		}
		out = append(out, x)
	}
	for _, a := range retry {
		heap.Push(&d.leases, expiry{a.expires, now.Add(busyRetry).UnixNano(), a})
	}
	return out, errors.Join(errs...)
}
