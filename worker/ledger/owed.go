package ledger

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/memworker/memworker/subjects"
)

// What a released holder is owed. A holder asked to release for a waiter
// above it gives up its whole size down to keep_bytes, often more than the
// waiter needs. The room it gave up is its own to take back: claims above
// its priority may take it (they could have asked it anyway), and take it
// before any other free room, so the room that was free before the
// release stays everyone's; what they take is a loan, repaid as they free
// or shrink. Claims at or below its priority see the room it is still owed
// as taken.

// loan is room a grant took from a holder's release: bytes of it, while
// the holder stays in the release it was asked for (gen).
type loan struct {
	from  *holder
	gen   uint64
	bytes int64
}

// giving reports whether the holder has been asked to release and has not
// been restored (or failed) since: the room it gave up is owed to it.
func (h *holder) giving() bool {
	return h.state == subjects.HolderReleasing || h.state == subjects.HolderReleased
}

// owedTo is the room claims of c's priority may not take: what released
// (or releasing) holders of that priority or above gave up and no claim
// above them has borrowed. A holder's own growth is never held back by
// what it is owed itself.
func (d *Device) owedTo(c claim) int64 {
	var owed int64
	for _, a := range d.holders {
		h := a.holding()
		if !h.giving() || h.priority < c.priority || a == c.self {
			continue
		}
		if c.restore && h.priority == c.priority {
			continue // holders of one priority are restored as room allows, in turn
		}
		owed += max(0, h.full-a.size-h.lent)
	}
	return owed
}

// lend records that a, just granted n bytes by a claim of priority, took
// them from the room holders below that priority gave up, lowest priority
// first, as far as they have room unlent.
func (d *Device) lend(a *allocation, priority int, n int64) {
	if n <= 0 || len(d.holders) == 0 {
		return
	}
	var from []*allocation
	for _, x := range d.holders {
		if h := x.holding(); h.giving() && h.priority < priority && x != a && h.full-x.size > h.lent {
			from = append(from, x)
		}
	}
	slices.SortStableFunc(from, func(x, y *allocation) int { return cmp.Compare(x.holding().priority, y.holding().priority) })
	for _, x := range from {
		if n <= 0 {
			return
		}
		h := x.holding()
		take := min(n, h.full-x.size-h.lent)
		h.lent += take
		n -= take
		if a.extra == nil {
			a.extra = &extra{}
		}
		a.extra.loans = append(a.extra.loans, loan{from: h, gen: h.gen, bytes: take})
	}
}

// endRelease ends a holder's release without restoring it (refused, timed
// out, or its restore past its tenant's quota): nothing stays owed to it,
// and what it gave up goes back to those it had borrowed from.
func (d *Device) endRelease(a *allocation) {
	h := a.holding()
	gaveUp := h.full - a.size
	h.state, h.full = subjects.HolderHeld, a.size
	// What it gave up repays its loans, latest first, as a plain shrink does.
	d.repay(a, gaveUp)
}

// repayAll gives all of a's loans back (a freed, or moved off the device).
func (d *Device) repayAll(a *allocation) { d.repay(a, math.MaxInt64) }

// repay gives n bytes of a's loans back to the holders they came from (a
// shrunk by n), the latest loan first.
func (d *Device) repay(a *allocation, n int64) {
	if a.extra == nil {
		return
	}
	loans := a.extra.loans
	for n > 0 && len(loans) > 0 {
		l := &loans[len(loans)-1]
		back := min(n, l.bytes)
		if l.from.gen == l.gen && l.from.giving() {
			l.from.lent -= back
		}
		l.bytes -= back
		n -= back
		if l.bytes == 0 {
			loans = loans[:len(loans)-1]
		}
	}
	a.extra.loans = loans
}

// auditLoans checks what each releasing or released holder has lent
// against the loans live allocations hold of its release, that no holder
// has lent more than its size before the release, and that no allocation
// owes more than its size (but a holder giving its room back).
func (d *Device) auditLoans() error {
	lent := map[*holder]int64{}
	for _, a := range d.allocs {
		if a.extra == nil {
			continue
		}
		var owes int64
		for _, l := range a.extra.loans {
			if l.from.gen == l.gen && l.from.giving() {
				lent[l.from] += l.bytes
				owes += l.bytes
			}
		}
		// Only a holder giving its room back keeps loans beyond its size.
		if h := a.holding(); (h == nil || !h.giving()) && owes > a.size {
			return fmt.Errorf("%s: allocation %s of %d bytes owes %d borrowed", d.id, a.idString(), a.size, owes)
		}
	}
	for _, a := range d.holders {
		h := a.holding()
		if !h.giving() {
			continue
		}
		if h.lent != lent[h] || h.lent < 0 || h.lent > h.full {
			return fmt.Errorf("%s: holder %s gave up %d bytes and counts %d lent; the loans of its release hold %d",
				d.id, a.idString(), h.full-a.size, h.lent, lent[h])
		}
	}
	return nil
}
