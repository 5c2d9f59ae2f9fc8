package ledger_test

import (
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// TestLeasesExpireOnTheirDeadline: the device names its next lease's
// expiry as its deadline (the worker's timer), frees a lease at that
// moment and not before, follows renewals and frees, waits for a lease in
// use, and frees the leases ending within ExpiryBatch of each other in one
// pass.
func TestLeasesExpireOnTheirDeadline(t *testing.T) {
	t0 := time.Now()
	lease := func(t *testing.T, d *ledger.Device, ttl time.Duration) subjects.Allocation {
		return allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: ttl.Seconds()})
	}
	expire := func(t *testing.T, d *ledger.Device, now time.Time, want ...string) {
		t.Helper()
		got, err := d.Expire(now)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range got {
			ids = append(ids, e.AllocationID)
		}
		if len(ids) != len(want) || (len(want) > 0 && !sameSet(ids, want)) {
			t.Fatalf("at +%v freed %v, want %v", now.Sub(t0), ids, want)
		}
	}
	deadline := func(t *testing.T, d *ledger.Device, want time.Time) {
		t.Helper()
		if got := d.NextDeadline(); !got.Equal(want) {
			t.Fatalf("next deadline %v, want %v", got.Sub(t0), want.Sub(t0))
		}
	}

	t.Run("at its expiry, not before", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		deadline(t, d, time.Time{})
		a := lease(t, d, time.Second)
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: mib})
		deadline(t, d, *a.ExpiresAt)
		expire(t, d, a.ExpiresAt.Add(-time.Nanosecond))
		expire(t, d, *a.ExpiresAt, a.AllocationID)
		deadline(t, d, time.Time{})
		audit(t, d)
	})
	t.Run("renewed", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		a := lease(t, d, time.Second)
		r, err := d.Renew(&subjects.RenewRequest{AllocationID: a.AllocationID, TTLSeconds: 10}, op, t0.Add(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		later := r.Renewed[0].ExpiresAt
		deadline(t, d, later)
		expire(t, d, *a.ExpiresAt)
		expire(t, d, later, a.AllocationID)
	})
	t.Run("freed", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		a := lease(t, d, time.Second)
		if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: a.AllocationID}, op); err != nil {
			t.Fatal(err)
		}
		deadline(t, d, time.Time{})
		expire(t, d, a.ExpiresAt.Add(time.Hour))
	})
	t.Run("in use", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		a := lease(t, d, time.Second)
		if _, err := d.Lend(a.AllocationID, ledger.Target{DeviceID: "n-gpu0", TotalBytes: gib, Type: subjects.Pinned}, subjects.ModeCopy, op); err != nil {
			t.Fatal(err)
		}
		expire(t, d, *a.ExpiresAt)
		deadline(t, d, a.ExpiresAt.Add(time.Second)) // looked at again later
		d.Return(a.AllocationID)
		deadline(t, d, *a.ExpiresAt) // the copy's end makes it due at once
		expire(t, d, a.ExpiresAt.Add(time.Millisecond), a.AllocationID)
		audit(t, d)
	})
	t.Run("a burst in one pass", func(t *testing.T) {
		const batch = 20 * time.Millisecond
		d, _ := newDevice(t, gib, func(c *ledger.Config) { c.ExpiryBatch, c.Start = batch, t0 })
		a, b := lease(t, d, time.Millisecond), lease(t, d, 5*time.Millisecond)
		deadline(t, d, t0.Add(batch)) // the first pass: a batch after the start
		expire(t, d, *a.ExpiresAt)
		expire(t, d, t0.Add(batch), a.AllocationID, b.AllocationID)
		c := lease(t, d, 25*time.Millisecond)
		deadline(t, d, t0.Add(2*batch))
		expire(t, d, *c.ExpiresAt)
		expire(t, d, t0.Add(2*batch), c.AllocationID)
	})
}

func sameSet(a, b []string) bool {
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestRenewalsDoNotGrowTheExpiryHeap: a tenant holding two leases (one
// ending in a minute, one in an hour) that renews the later one in a loop
// leaves an entry per renewal below the first lease's: they are dropped
// once they outnumber the allocations, not an hour later.
func TestRenewalsDoNotGrowTheExpiryHeap(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 60})
	a := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 3600})
	now := time.Now()
	for i := range 100_000 {
		if _, err := d.Renew(&subjects.RenewRequest{AllocationID: a.AllocationID}, op, now.Add(time.Duration(i)*time.Microsecond)); err != nil {
			t.Fatal(err)
		}
		d.NextDeadline()
	}
	if n := ledger.LeaseHeapLen(d); n > 100 {
		t.Errorf("2 live leases, %d heap entries after 100,000 renewals", n)
	}
}

// TestFreedLeasesAreNotKept: leases allocated and freed in a loop do not
// stay in the heap (their allocations with them) until their expiry.
func TestFreedLeasesAreNotKept(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 60})
	for range 20_000 {
		a := allocate(t, d, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 3600})
		if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: a.AllocationID}, op); err != nil {
			t.Fatal(err)
		}
		d.NextDeadline()
	}
	if n := ledger.LeaseHeapLen(d); n > 100 {
		t.Errorf("1 live lease, %d heap entries (each holding a freed allocation) after 20,000 allocate/deallocate", n)
	}
}
