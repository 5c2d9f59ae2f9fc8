package ledger_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// wait asks, for who at now, for size bytes that may wait wait seconds at
// priority, and returns the ticket (0: answered at once) and the error.
func wait(t *testing.T, d *ledger.Device, who ledger.Who, id string, now time.Time, size int64, wait float64, priority int) (ledger.Ticket, error) {
	t.Helper()
	_, ticket, err := d.Allocate(ctx, ledger.Call{Who: who, Now: now, RequestID: id},
		valid(t, &subjects.AllocateRequest{SizeBytes: size, WaitSeconds: wait, TTLSeconds: 600, Priority: priority}))
	return ticket, err
}

// decided finds ticket among ds.
func decided(ds []ledger.Decision, ticket ledger.Ticket) (ledger.Decision, bool) {
	for _, d := range ds {
		if d.Ticket == ticket {
			return d, true
		}
	}
	return ledger.Decision{}, false
}

// TestTheAdmissionPolicy: the queue as a user expects it.
func TestTheAdmissionPolicy(t *testing.T) {
	t.Run("waiters are granted by priority, then age, and a retry joins", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		full := allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: gib - 16*mib})
		low, _ := wait(t, d, tenantB, "low", t0, 512*mib, 60, 0)
		high, _ := wait(t, d, tenantA, "high", t0.Add(time.Second), 256*mib, 60, 10)
		if low == 0 || high == 0 {
			t.Fatalf("tickets %d, %d: both should wait", low, high)
		}
		if again, err := wait(t, d, tenantA, "high", t0.Add(2*time.Second), 256*mib, 60, 10); again != high || err != nil {
			t.Errorf("a retry: ticket %d, %v; want %d", again, err, high)
		}
		if _, err := wait(t, d, tenantA, "high", t0.Add(2*time.Second), 128*mib, 60, 10); !errors.Is(err, ledger.ErrConflict) {
			t.Errorf("a retry with another payload: %v, want a conflict", err)
		}
		if n, bytes := d.Waiting(); n != 2 || bytes != 768*mib {
			t.Errorf("waiting %d, %d bytes", n, bytes)
		}
		if next := d.NextDeadline(); !next.Equal(t0.Add(60 * time.Second)) {
			t.Errorf("next deadline %v", next)
		}
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: full.AllocationID}), op); err != nil {
			t.Fatal(err)
		}
		ds := d.Admit(ctx, t0.Add(3*time.Second))
		if len(ds) != 2 || ds[0].Ticket != high || ds[1].Ticket != low || ds[0].Err != nil || ds[1].Err != nil {
			t.Fatalf("decisions %+v: want high, then low, granted", ds)
		}
		if ds[0].Allocation.WaitedSeconds != 2 || ds[0].Who != tenantA {
			t.Errorf("high waited %v s for %+v", ds[0].Allocation.WaitedSeconds, ds[0].Who)
		}
		if a, ticket, err := d.Allocate(ctx, ledger.Call{Who: tenantA, Now: t0, RequestID: "high"},
			valid(t, &subjects.AllocateRequest{SizeBytes: 256 * mib, WaitSeconds: 60, TTLSeconds: 600, Priority: 10})); err != nil || ticket != 0 || a.AllocationID != ds[0].Allocation.AllocationID {
			t.Errorf("a retry after the grant: %+v, %d, %v", a, ticket, err)
		}
		audit(t, d)
	})

	t.Run("a deadline refuses with the reason, and the worker's stop refuses the rest", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: gib - 16*mib})
		short, _ := wait(t, d, tenantA, "", t0, 64*mib, 1, 0)
		long, _ := wait(t, d, tenantB, "", t0, 64*mib, 60, 0)
		if ds := d.Admit(ctx, t0.Add(500*time.Millisecond)); len(ds) != 0 {
			t.Errorf("before any deadline: %+v", ds)
		}
		dec, ok := decided(d.Admit(ctx, t0.Add(2*time.Second)), short)
		if !ok || !errors.Is(dec.Err, device.ErrOutOfMemory) {
			t.Errorf("at its deadline: %+v", dec)
		}
		dec, ok = decided(d.Stop(t0.Add(3*time.Second)), long)
		if !ok || !errors.Is(dec.Err, device.ErrUnavailable) {
			t.Errorf("at the stop: %+v", dec)
		}
		if n, _ := d.Waiting(); n != 0 || !d.NextDeadline().IsZero() {
			t.Errorf("%d still waiting", n)
		}
	})

	t.Run("the queue is bounded, a tenant to a quarter of it", func(t *testing.T) {
		d, _ := newDevice(t, gib, func(c *ledger.Config) { c.MaxWaiters = 8 })
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: gib - 16*mib})
		for i := range 2 {
			if ticket, err := wait(t, d, tenantA, "", t0, 64*mib, 60, 0); ticket == 0 {
				t.Fatalf("A's waiter %d: %v", i, err)
			}
		}
		if _, err := wait(t, d, tenantA, "", t0, 64*mib, 60, 0); !errors.Is(err, ledger.ErrOverloaded) {
			t.Errorf("A's third: %v, want overloaded", err)
		}
		for i := range 6 {
			if ticket, err := wait(t, d, op, "", t0, 64*mib, 60, 0); ticket == 0 {
				t.Fatalf("the operator's waiter %d: %v", i, err)
			}
		}
		if _, err := wait(t, d, tenantB, "", t0, 64*mib, 60, 0); !errors.Is(err, ledger.ErrOverloaded) {
			t.Errorf("past the device's cap: %v, want overloaded", err)
		}
	})

	t.Run("without wait_seconds a request does not queue", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: gib - 16*mib})
		if ticket, err := wait(t, d, tenantA, "", t0, 64*mib, 0, 0); ticket != 0 || !errors.Is(err, device.ErrOutOfMemory) {
			t.Errorf("%d, %v", ticket, err)
		}
	})
}

// TestLeases: renew extends leases all or nothing; an allocation without a
// ttl becomes a lease only when renew gives one; expiry frees the lapsed.
func TestLeases(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	lease := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: mib, TTLSeconds: 10})
	plain := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: mib})
	later := t0.Add(5 * time.Second)
	r, err := d.Renew(valid(t, &subjects.RenewRequest{AllocationID: lease.AllocationID}), tenantA, later)
	if err != nil || len(r.Renewed) != 1 || !r.Renewed[0].ExpiresAt.Equal(later.Add(10*time.Second)) {
		t.Errorf("renew: %+v, %v", r, err)
	}
	if _, err := d.Renew(valid(t, &subjects.RenewRequest{AllocationIDs: []string{lease.AllocationID, plain.AllocationID}}), tenantA, later); !errors.Is(err, ledger.ErrInvalid) {
		t.Errorf("renewing a non-lease without ttl: %v", err)
	}
	if _, err := d.Renew(valid(t, &subjects.RenewRequest{AllocationID: lease.AllocationID}), tenantB, later); !errors.Is(err, ledger.ErrAllocationNotFound) {
		t.Errorf("B renewing A's lease: %v", err)
	}
	if err := d.Find(lease.AllocationID, tenantB); !errors.Is(err, ledger.ErrAllocationNotFound) {
		t.Errorf("B finds A's lease: %v", err)
	}
	freed, err := d.Expire(later.Add(11 * time.Second))
	if err != nil || len(freed) != 1 || freed[0].AllocationID != lease.AllocationID {
		t.Errorf("expired %+v, %v", freed, err)
	}
	audit(t, d)
}

// TestReadReleasesTheCacheAtTheWarning: with auto-release on, a reading at
// the warning threshold returns the pool's cache to the device; below it,
// or with auto-release off, the cache stays.
func TestReadReleasesTheCacheAtTheWarning(t *testing.T) {
	for _, tc := range []struct {
		name        string
		autoRelease bool
		other       int64 // another process's bytes
		released    bool
	}{
		{"at the warning", true, 900 * mib, true},
		{"below it", true, 0, false},
		{"turned off", false, 900 * mib, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, b := newDevice(t, gib, func(c *ledger.Config) { c.AutoRelease = tc.autoRelease })
			a := allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: 64 * mib})
			if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), op); err != nil {
				t.Fatal(err)
			}
			b.SetExternalUsage(0, tc.other)
			r, err := d.Read(ctx, t0)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Released > 0; got != tc.released || (tc.released && r.Usage.CachedBytes != 0) {
				t.Errorf("released %d, cache left %d", r.Released, r.Usage.CachedBytes)
			}
		})
	}
}

// TestTenantsSeeTheirOwn: figures by purpose, consumers in events and the
// tenants' list name tenants, never another tenant's models.
func TestTenantsSeeTheirOwn(t *testing.T) {
	d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Quotas = map[string]int64{"A": gib, "C": gib} })
	allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 64 * mib, Purpose: "kv", ModelID: "a-model"})
	allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 32 * mib, Purpose: "weights", ModelID: "b-model"})
	u, err := d.Usage(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if ps := d.WithPurposes(u, tenantA).ByPurpose; len(ps) != 1 || ps[0].Purpose != "kv" {
		t.Errorf("A's purposes: %+v", ps)
	}
	for _, c := range d.Consumers(u, 10) {
		if c.Kind == subjects.ConsumerModel || c.Kind == subjects.ConsumerPurpose {
			t.Errorf("an event names %+v", c)
		}
	}
	ts := d.Tenants()
	if len(ts) != 3 || ts[0].Tenant != "A" || ts[0].QuotaBytes != gib || ts[1].Tenant != "B" || ts[2].Tenant != "C" || ts[2].Allocations != 0 {
		t.Errorf("tenants %+v", ts)
	}
}

// TestAReservationFollowsItsProcess: a reservation for a pid counts what
// the process has not used yet as promised, and is listed once when the
// process grows past it.
func TestAReservationFollowsItsProcess(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	r := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 100 * mib, AllocationType: subjects.Reservation, PID: 42})
	b.SetProcess(0, 42, 40*mib)
	u, err := d.Usage(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if u.ReservationUnusedBytes != 60*mib {
		t.Errorf("unused %d, want 60 MiB", u.ReservationUnusedBytes)
	}
	page := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{AllocationType: subjects.Reservation}))
	if page.TotalCount != 1 || page.Allocations[0].PID != 42 || page.Allocations[0].ObservedBytes != 40*mib {
		t.Errorf("listing: %+v", page)
	}
	b.SetProcess(0, 42, 150*mib)
	read, err := d.Read(ctx, t0.Add(2*time.Second))
	if err != nil || len(read.Exceeding) != 1 || read.Exceeding[0].AllocationID != r.AllocationID {
		t.Errorf("past its size: %+v, %v", read.Exceeding, err)
	}
	if again := d.Exceeding(); len(again) != 0 {
		t.Errorf("listed again while still past: %+v", again)
	}
}

// TestCountsByFilter: total_count from the figures by name and type, and
// from a walk with more than one filter, agree with the entries.
func TestCountsByFilter(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: mib, Purpose: "kv", ModelID: "m"})
	allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: mib, Purpose: "kv", ModelID: "n"})
	allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: mib, Purpose: "w", AllocationType: subjects.Pinned})
	for _, tc := range []struct {
		req  subjects.AllocationsRequest
		want int
	}{
		{subjects.AllocationsRequest{}, 3},
		{subjects.AllocationsRequest{Purpose: "kv"}, 2},
		{subjects.AllocationsRequest{ModelID: "n"}, 1},
		{subjects.AllocationsRequest{AllocationType: subjects.Pinned}, 1},
		{subjects.AllocationsRequest{Purpose: "kv", ModelID: "m"}, 1},
	} {
		if got := d.Allocations(context.Background(), ledger.Call{Who: op, Now: time.Now()}, valid(t, &tc.req)).TotalCount; got != tc.want {
			t.Errorf("%+v: %d, want %d", tc.req, got, tc.want)
		}
	}
	if got := d.Allocations(context.Background(), ledger.Call{Who: tenantA, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{})).TotalCount; got != 0 {
		t.Errorf("a tenant without allocations counts %d", got)
	}
}
