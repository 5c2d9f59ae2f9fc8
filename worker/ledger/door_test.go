package ledger_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// The one door, as a table: every path by which memory is granted on a
// device, against every rule of the door. Each cell sets up a device where
// only that rule stands in the way and expects the path refused with the
// rule's kind; then the same device with the rule satisfied and expects
// the grant.

const (
	doorTotal = gib
	doorSize  = 64 * mib
	guard     = 10 * time.Second
)

var (
	tenantA = ledger.Who{Tenant: "A"}
	tenantB = ledger.Who{Tenant: "B"}
	t0      = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	// late is when a waiter queued at t0 has waited past the guard.
	late = t0.Add(guard + time.Second)
)

// doorPath is one way memory is granted: prepare runs on a fresh device
// before the rule is set up, grant asks for doorSize bytes for tenant A at
// now and returns the refusal.
type doorPath struct {
	name    string
	prepare func(t *testing.T, d *ledger.Device) string
	grant   func(t *testing.T, d *ledger.Device, prepared string, now time.Time) error
	// quotaExempt: the path's bytes are counted against the quota already
	// (a restore); kindless: its refusal reaches the client as a reason in
	// its reply, not an error of a kind (a restore's skipped model).
	quotaExempt, kindless bool
}

func at(who ledger.Who, now time.Time) ledger.Call { return ledger.Call{Who: who, Now: now} }

var doorPaths = []doorPath{
	{name: "allocate", grant: func(t *testing.T, d *ledger.Device, _ string, now time.Time) error {
		_, _, err := d.Allocate(ctx, at(tenantA, now), valid(t, &subjects.AllocateRequest{SizeBytes: doorSize}))
		return err
	}},
	{name: "reservation", grant: func(t *testing.T, d *ledger.Device, _ string, now time.Time) error {
		_, _, err := d.Allocate(ctx, at(tenantA, now), valid(t, &subjects.AllocateRequest{SizeBytes: doorSize, AllocationType: subjects.Reservation}))
		return err
	}},
	{name: "waiter", grant: grantAfterWaiting},
	{name: "transfer destination", prepare: func(t *testing.T, d *ledger.Device) string {
		return allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: doorSize}).AllocationID
	}, grant: func(t *testing.T, d *ledger.Device, src string, now time.Time) error {
		lent, err := d.Lend(src, ledger.Target{DeviceID: d.ID(), TotalBytes: doorTotal, Type: subjects.VRAM}, subjects.ModeCopy, tenantA)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Return(src)
		id, _, err := d.Receive(ctx, at(tenantA, now), lent, subjects.VRAM)
		if err == nil {
			if err := d.Settle(id, false, true, now); err != nil {
				t.Fatal(err)
			}
		}
		return err
	}},
	{name: "resize", prepare: func(t *testing.T, d *ledger.Device) string {
		return allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: doorSize, AllocationType: subjects.Reservation}).AllocationID
	}, grant: func(t *testing.T, d *ledger.Device, id string, now time.Time) error {
		_, _, err := d.Resize(ctx, at(tenantA, now), valid(t, &subjects.ResizeRequest{AllocationID: id, SizeBytes: 2 * doorSize}))
		return err
	}},
	{name: "restore", quotaExempt: true, kindless: true, prepare: func(t *testing.T, d *ledger.Device) string {
		allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: doorSize, ModelID: "m"})
		target := 0.0
		r, err := d.ModelOptimize(ctx, at(tenantA, t0), valid(t, &subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &target}))
		if err != nil || len(r.OptimizationDetails.Models) != 1 {
			t.Fatalf("offloading the model: %+v, %v", r, err)
		}
		return "m"
	}, grant: func(t *testing.T, d *ledger.Device, _ string, now time.Time) error {
		r, err := d.ModelOptimize(ctx, at(tenantA, now), valid(t, &subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeRestore, ModelID: "m"}))
		if err != nil {
			return err
		}
		if len(r.OptimizationDetails.SkippedModels) > 0 {
			return errors.New(r.OptimizationDetails.SkippedModels[0].Reason)
		}
		return nil
	}},
}

// grantAfterWaiting queues A's request behind a filler that takes what is
// available, frees the filler and lets the queue be examined at now: the
// waiter's grant. A refusal is the one at its deadline.
func grantAfterWaiting(t *testing.T, d *ledger.Device, _ string, now time.Time) error {
	u, err := d.Usage(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	var filler subjects.Allocation
	if fill := u.AvailableBytes - u.AvailableBytes%(2*mib); fill > 0 {
		// Above every holder: room a released holder is owed is filled too.
		filler = allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: fill, Priority: 100})
	}
	_, ticket, err := d.Allocate(ctx, at(tenantA, t0), valid(t, &subjects.AllocateRequest{SizeBytes: doorSize, WaitSeconds: 60, TTLSeconds: 60}))
	if ticket == 0 {
		t.Fatalf("the request did not wait behind the filler: %v", err)
	}
	if filler.AllocationID != "" {
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: filler.AllocationID}), op); err != nil {
			t.Fatal(err)
		}
	}
	for _, at := range []time.Time{now, t0.Add(61 * time.Second)} {
		for _, dec := range d.Admit(ctx, at) {
			if dec.Ticket == ticket {
				return dec.Err
			}
		}
	}
	t.Fatal("the waiter was neither granted nor refused at its deadline")
	return nil
}

// doorRule sets up a device where only the rule stands in the way of A's
// doorSize bytes (holds) or where it does not (!holds), and says when A
// asks.
type doorRule struct {
	name  string
	kind  error
	setUp func(t *testing.T, d *ledger.Device, holds bool) time.Time
}

var doorRules = []doorRule{
	{name: "quota", kind: ledger.ErrQuotaExceeded, setUp: func(t *testing.T, d *ledger.Device, holds bool) time.Time {
		// A holds doorSize already; its quota (doorConfig) leaves room for
		// another doorSize or not.
		if u, _ := d.TenantUsage(tenantA); u.AllocatedBytes == 0 {
			allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: doorSize})
		}
		return t0
	}},
	{name: "reservations", kind: device.ErrOutOfMemory, setUp: func(t *testing.T, d *ledger.Device, holds bool) time.Time {
		return fillAllBut(t, d, holds, subjects.Reservation)
	}},
	{name: "admission queue", kind: device.ErrOutOfMemory, setUp: func(t *testing.T, d *ledger.Device, holds bool) time.Time {
		// B waits, since t0, for more than is free while the operator
		// holds a quarter of the device.
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: doorTotal / 4})
		_, ticket, err := d.Allocate(ctx, at(tenantB, t0), valid(t, &subjects.AllocateRequest{SizeBytes: doorTotal - doorTotal/8, WaitSeconds: 300, TTLSeconds: 60}))
		if ticket == 0 {
			t.Fatalf("B's request did not wait: %v", err)
		}
		if holds {
			return late // B has waited past the guard: A waits behind it
		}
		return t0.Add(guard / 2) // B is young: A passes it
	}},
	{name: "room", kind: device.ErrOutOfMemory, setUp: func(t *testing.T, d *ledger.Device, holds bool) time.Time {
		return fillAllBut(t, d, holds, subjects.VRAM)
	}},
	{name: "owed to a released holder", kind: device.ErrOutOfMemory, setUp: func(t *testing.T, d *ledger.Device, holds bool) time.Time {
		// B's holder of A's priority takes what is available but leave;
		// the operator's waiter above it needs leave and doorSize more,
		// so the holder releases all it has, and the waiter takes that
		// first. The rest of the release is B's to take back: A has leave.
		available, leave := availableAndLeave(t, d, holds)
		h := holderOf(t, d, tenantB, available-leave, 0, 0)
		_, ticket, err := d.Allocate(ctx, at(op, t0), valid(t, &subjects.AllocateRequest{SizeBytes: leave + doorSize, WaitSeconds: 60, TTLSeconds: 600, Priority: 10}))
		if ticket == 0 {
			t.Fatalf("the waiter above the holder did not wait: %v", err)
		}
		if r := d.Step(ctx, t0); len(r.Asks) != 1 {
			t.Fatalf("asks %+v, want the holder's release", r.Asks)
		}
		if _, _, err := d.Resize(ctx, at(tenantB, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 0})); err != nil {
			t.Fatal(err)
		}
		d.Answered(h.AllocationID, nil, t0)
		if r := d.Step(ctx, t0); len(r.Decisions) != 1 || r.Decisions[0].Ticket != ticket || r.Decisions[0].Err != nil {
			t.Fatalf("the waiter above the holder: %+v", r.Decisions)
		}
		return t0
	}},
}

// fillAllBut has the operator take what is available but half of doorSize
// (holds) or twice doorSize, as memory of type typ: a reservation (the
// promised memory of another process) or VRAM (the device's room).
func fillAllBut(t *testing.T, d *ledger.Device, holds bool, typ subjects.AllocationType) time.Time {
	t.Helper()
	available, leave := availableAndLeave(t, d, holds)
	allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: available - leave, AllocationType: typ})
	return t0
}

// availableAndLeave is what is available on d, and what a rule's set-up
// leaves of it: half of doorSize when the rule holds, twice doorSize not.
func availableAndLeave(t *testing.T, d *ledger.Device, holds bool) (available, leave int64) {
	t.Helper()
	u, err := d.Usage(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if holds {
		return u.AvailableBytes, doorSize / 2
	}
	return u.AvailableBytes, 2 * doorSize
}

// doorConfig gives tenant A a quota that its prepared allocation plus
// doorSize passes (rule holds) or not.
func doorConfig(quotaHolds bool) func(*ledger.Config) {
	return func(c *ledger.Config) {
		c.StarvationGuard = guard
		c.Quotas = map[string]int64{"A": 3 * doorSize}
		if quotaHolds {
			c.Quotas["A"] = doorSize + doorSize/2
		}
	}
}

func TestEveryGrantPassesTheDoor(t *testing.T) {
	for _, p := range doorPaths {
		for _, r := range doorRules {
			if r.name == "quota" && p.quotaExempt {
				continue
			}
			t.Run(p.name+"/"+r.name, func(t *testing.T) {
				for _, holds := range []bool{true, false} {
					d, _ := newDevice(t, doorTotal, doorConfig(holds && r.name == "quota"))
					var prepared string
					if p.prepare != nil {
						prepared = p.prepare(t, d)
					}
					now := r.setUp(t, d, holds)
					err := p.grant(t, d, prepared, now)
					switch {
					case holds && p.kindless && err == nil:
						t.Errorf("with the rule in the way: granted")
					case holds && !p.kindless && !errors.Is(err, r.kind):
						t.Errorf("with the rule in the way: %v, want %v", err, r.kind)
					case !holds && err != nil:
						t.Errorf("with the rule satisfied: %v, want a grant", err)
					}
					audit(t, d)
				}
			})
		}
	}
}

func allocateAs(t *testing.T, d *ledger.Device, who ledger.Who, now time.Time, req subjects.AllocateRequest) subjects.Allocation {
	t.Helper()
	a, ticket, err := d.Allocate(ctx, at(who, now), valid(t, &req))
	if err != nil || ticket != 0 {
		t.Fatalf("allocating %+v: %v (ticket %d)", req, err, ticket)
	}
	return a
}

// TestAnIDSpeltTwiceIsFreedOnce: ids are matched in any letter case, so a
// deallocate that names one allocation in several spellings frees it once,
// for every type, and the tenant's figures (its quota) and the device's
// reservations stay true.
func TestAnIDSpeltTwiceIsFreedOnce(t *testing.T) {
	for _, typ := range []subjects.AllocationType{subjects.VRAM, subjects.Pinned, subjects.Reservation} {
		t.Run(string(typ), func(t *testing.T) {
			d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Quotas = map[string]int64{"A": 100 * mib} })
			now := time.Now()
			var ids []string
			for range 3 {
				a, _, err := d.Allocate(ctx, at(tenantA, now), valid(t, &subjects.AllocateRequest{SizeBytes: 30 * mib, AllocationType: typ}))
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, a.AllocationID)
			}
			id := ids[0]
			spellings := []string{id, strings.ToUpper(id), strings.ToUpper(id[:8]) + id[8:]}
			if got := d.Allocations(ctx, at(tenantA, now), valid(t, &subjects.AllocationsRequest{AllocationIDs: spellings})); len(got.Allocations) != 1 {
				t.Errorf("get_allocations of three spellings of one id listed %d entries", len(got.Allocations))
			}
			if r, err := d.Renew(valid(t, &subjects.RenewRequest{AllocationIDs: spellings, TTLSeconds: 60}), tenantA, now); err != nil || len(r.Renewed) != 1 {
				t.Errorf("renew of three spellings of one id: %+v, %v", r.Renewed, err)
			}
			r, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationIDs: spellings}), tenantA)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.DeallocatedIDs) != 1 || r.DeallocatedIDs[0] != id {
				t.Errorf("deallocated %v, want [%s] once", r.DeallocatedIDs, id)
			}
			audit(t, d)
			tu, _ := d.TenantUsage(tenantA)
			want := int64(60 * mib)
			if typ == subjects.Pinned {
				want = 0 // host memory: no device quota
			}
			if tu.Allocations != 2 || tu.AllocatedBytes != want {
				t.Errorf("tenant figures %+v, want 2 allocations of %d bytes", tu, want)
			}
			if typ == subjects.Pinned {
				return
			}
			if _, _, err := d.Allocate(ctx, at(tenantA, now), valid(t, &subjects.AllocateRequest{SizeBytes: 70 * mib, AllocationType: typ})); !errors.Is(err, ledger.ErrQuotaExceeded) {
				t.Errorf("70 MiB more past a 100 MiB quota holding 60: %v, want a quota error", err)
			}
			if typ == subjects.Reservation {
				if u := usage(t, d); u.ReservationUnusedBytes != 60*mib {
					t.Errorf("reservation_unused %d, want the two left (60 MiB)", u.ReservationUnusedBytes)
				}
			}
		})
	}
}

// gate is a device's gate for the tests: closed while why is set.
type gate struct{ why error }

func (g *gate) Closed(time.Time) error { return g.why }

// gated is a doorConfig with the gate g.
func gated(g *gate) func(*ledger.Config) {
	return func(c *ledger.Config) { doorConfig(false)(c); c.Gate = g }
}

// TestAClosedGateGrantsNothing: while the worker cannot confirm it still
// serves the node (its gate closed), the door refuses every grant on every
// path with ErrPaused (a waiter waits through it, and no holder is asked
// to release for it), and grants again once the gate opens; frees and
// renewals go on meanwhile.
func TestAClosedGateGrantsNothing(t *testing.T) {
	why := errors.New("the node's lease cannot be renewed")
	for _, p := range doorPaths {
		t.Run(p.name, func(t *testing.T) {
			g := &gate{}
			d, _ := newDevice(t, doorTotal, gated(g))
			var prepared string
			if p.prepare != nil {
				prepared = p.prepare(t, d)
			}
			g.why = why
			if p.name == "waiter" {
				_, ticket, err := d.Allocate(ctx, at(tenantA, t0), valid(t, &subjects.AllocateRequest{SizeBytes: doorSize, WaitSeconds: 60, TTLSeconds: 60}))
				if ticket == 0 {
					t.Fatalf("a request that may wait did not wait through the closed gate: %v", err)
				}
				if ds := d.Admit(ctx, t0.Add(time.Second)); len(ds) != 0 {
					t.Fatalf("decided while closed: %+v", ds)
				}
				g.why = nil
				if ds := d.Admit(ctx, t0.Add(2*time.Second)); len(ds) != 1 || ds[0].Ticket != ticket || ds[0].Err != nil {
					t.Fatalf("once the gate opened: %+v, want the waiter granted", ds)
				}
				audit(t, d)
				return
			}
			err := p.grant(t, d, prepared, t0)
			switch {
			case p.kindless && err == nil:
				t.Errorf("closed: granted")
			case !p.kindless && !errors.Is(err, ledger.ErrPaused):
				t.Errorf("closed: %v, want %v", err, ledger.ErrPaused)
			case !p.kindless && !strings.Contains(err.Error(), why.Error()):
				t.Errorf("closed: %q does not say why", err)
			}
			audit(t, d)
			g.why = nil
			if err := p.grant(t, d, prepared, t0); err != nil {
				t.Errorf("once the gate opened: %v, want a grant", err)
			}
			audit(t, d)
		})
	}
	t.Run("frees and renewals go on", func(t *testing.T) {
		g := &gate{}
		d, _ := newDevice(t, doorTotal, gated(g))
		a := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: doorSize, TTLSeconds: 60})
		g.why = why
		if r, err := d.Renew(valid(t, &subjects.RenewRequest{AllocationIDs: []string{a.AllocationID}, TTLSeconds: 60}), tenantA, t0); err != nil || len(r.Renewed) != 1 {
			t.Errorf("renew while closed: %+v, %v", r, err)
		}
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: a.AllocationID}), tenantA); err != nil {
			t.Errorf("deallocate while closed: %v", err)
		}
		audit(t, d)
	})
	t.Run("closed for good, nothing waits", func(t *testing.T) {
		g := &gate{why: fmt.Errorf("the worker gave the node up: %w", device.ErrUnavailable)}
		d, _ := newDevice(t, doorTotal, gated(g))
		_, ticket, err := d.Allocate(ctx, at(tenantA, t0), valid(t, &subjects.AllocateRequest{SizeBytes: doorSize, WaitSeconds: 60, TTLSeconds: 60}))
		if ticket != 0 || !errors.Is(err, device.ErrUnavailable) {
			t.Errorf("a gate closed for good: ticket %d, %v; want refused at once, unavailable", ticket, err)
		}
	})
	t.Run("no holder is asked to release", func(t *testing.T) {
		g := &gate{}
		d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Gate = g })
		holderOf(t, d, tenantA, 800*mib, 100*mib, 0)
		g.why = why
		if ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10); ticket == 0 {
			t.Fatal("the waiter did not wait")
		}
		if r := d.Step(ctx, t0.Add(time.Second)); len(r.Asks) != 0 {
			t.Errorf("closed, the device asked %d holder(s) to release for a grant it cannot make", len(r.Asks))
		}
		g.why = nil
		if r := d.Step(ctx, t0.Add(2*time.Second)); len(r.Asks) != 1 {
			t.Errorf("once the gate opened: %d asks, want the holder's", len(r.Asks))
		}
	})
}
