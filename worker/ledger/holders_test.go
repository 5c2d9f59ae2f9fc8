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

// holderOf reserves size bytes for who at priority, as a holder that keeps
// keep bytes when asked.
func holderOf(t *testing.T, d *ledger.Device, who ledger.Who, size, keep int64, priority int) subjects.Allocation {
	t.Helper()
	return allocateAs(t, d, who, t0, subjects.AllocateRequest{SizeBytes: size, AllocationType: subjects.Reservation, Priority: priority,
		Reclaim: &subjects.Reclaim{Subject: "holders." + who.Tenant + ".model", KeepBytes: keep}})
}

// releaseFor has the 500 MiB waiter w1 of B at priority 10 take h's
// release (h shrinks to 0) and returns the waiter's allocation id.
func releaseFor(t *testing.T, d *ledger.Device, h subjects.Allocation, who ledger.Who, now time.Time) string {
	t.Helper()
	wait(t, d, tenantB, "w1", now, 500*mib, 60, 10)
	d.Step(ctx, now)
	if _, _, err := d.Resize(ctx, at(who, now), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 0})); err != nil {
		t.Fatal(err)
	}
	d.Answered(h.AllocationID, nil, now)
	r := d.Step(ctx, now.Add(time.Second))
	if len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
		t.Fatalf("the waiter above the holder: %+v", r.Decisions)
	}
	return r.Decisions[0].Allocation.AllocationID
}

func kinds(evs []ledger.HandoffEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type+":"+e.Holder.AllocationID[:8])
	}
	return out
}

// TestTheHandoff: a waiter that cannot fit gets memory from a holder of
// lower priority: asked, verified, granted, and given back when the
// waiter leaves.
func TestTheHandoff(t *testing.T) {
	t.Run("asked, verified, granted, restored", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		h := holderOf(t, d, tenantA, 800*mib, 100*mib, 0)
		if h.ReclaimState != subjects.HolderHeld || h.Reclaim == nil {
			t.Fatalf("holder %+v", h)
		}
		ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		if ticket == 0 {
			t.Fatal("the waiter did not wait")
		}
		asks, evs, _ := d.Handoff(ctx, t0)
		if len(asks) != 1 || asks[0].Action != subjects.ActionRelease || asks[0].Holder.AllocationID != h.AllocationID ||
			asks[0].Notice.BytesWanted != 700*mib || len(evs) != 1 || evs[0].Type != ledger.HandoffRequested || evs[0].WaiterPriority != 10 {
			t.Fatalf("asks %+v, events %v", asks, kinds(evs))
		}
		if again, _, _ := d.Handoff(ctx, t0.Add(time.Second)); len(again) != 0 {
			t.Errorf("asked again while releasing: %+v", again)
		}
		if len(d.Admit(ctx, t0.Add(time.Second))) != 0 {
			t.Error("granted before the release")
		}
		// The holder shrinks to what it keeps, and answers.
		if _, _, err := d.Resize(ctx, at(tenantA, t0.Add(2*time.Second)), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 100 * mib})); err != nil {
			t.Fatal(err)
		}
		d.Answered(h.AllocationID, nil, t0)
		_, evs, grew := d.Handoff(ctx, t0.Add(2*time.Second))
		if !grew || len(evs) != 1 || evs[0].Type != ledger.HandoffCompleted || evs[0].BytesReleased != 700*mib {
			t.Fatalf("after the release: %v, grew %v", kinds(evs), grew)
		}
		ds := d.Admit(ctx, t0.Add(2*time.Second))
		if len(ds) != 1 || ds[0].Ticket != ticket || ds[0].Err != nil {
			t.Fatalf("the waiter: %+v", ds)
		}
		// While the waiter holds the room, the door keeps the holder
		// released.
		if asks, _, _ := d.Handoff(ctx, t0.Add(2*time.Second)); len(asks) != 0 {
			t.Fatalf("restored without room: %+v", asks)
		}
		// Room returns when the waiter leaves: the holder grows back.
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: ds[0].Allocation.AllocationID}), tenantB); err != nil {
			t.Fatal(err)
		}
		asks, evs, _ = d.Handoff(ctx, t0.Add(3*time.Second))
		if len(asks) != 1 || asks[0].Action != subjects.ActionRestore || len(evs) != 1 || evs[0].Type != ledger.HandoffRestored || evs[0].Holder.SizeBytes != 800*mib {
			t.Fatalf("restore: asks %+v, events %v", asks, kinds(evs))
		}
		audit(t, d)
	})

	t.Run("the room goes back to the holder, not to a waiter below it", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		h := holderOf(t, d, tenantA, 800*mib, 0, 0)
		high := releaseFor(t, d, h, tenantA, t0)
		low, _ := wait(t, d, tenantB, "w2", t0.Add(time.Second), 600*mib, 60, -50)
		if low == 0 {
			t.Fatal("the waiter below the holder did not wait")
		}
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: high}), tenantB); err != nil {
			t.Fatal(err)
		}
		r := d.Step(ctx, t0.Add(2*time.Second))
		if len(r.Decisions) != 0 {
			t.Errorf("the waiter below the holder was answered: %+v", r.Decisions)
		}
		if len(r.Asks) != 1 || r.Asks[0].Action != subjects.ActionRestore || allocationSize(t, d, h.AllocationID) != 800*mib {
			t.Errorf("the holder was not restored first: asks %+v, size %d", r.Asks, allocationSize(t, d, h.AllocationID))
		}
		audit(t, d)
	})

	t.Run("room that was free before the release stays everyone's", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		releaseFor(t, d, holderOf(t, d, tenantA, 800*mib, 0, 0), tenantA, t0)
		// A tenant of the holder's priority is not shut out of the device
		// while the holder is released.
		if _, _, err := d.Allocate(ctx, at(tenantB, t0.Add(time.Second)), valid(t, &subjects.AllocateRequest{SizeBytes: 100 * mib})); err != nil {
			t.Errorf("100 MiB beside a released holder: %v", err)
		}
		audit(t, d)
	})

	t.Run("what it released beyond its waiter's need stays the holder's", func(t *testing.T) {
		// 1 GiB, 224 MiB free beside an 800 MiB holder; the waiter above
		// it needs 500 MiB and takes them from the 800 released.
		d, _ := newDevice(t, gib, nil)
		h := holderOf(t, d, tenantA, 800*mib, 0, 0)
		high := releaseFor(t, d, h, tenantA, t0)
		now := t0.Add(time.Second)
		// Below the holder: the 224 MiB free before, not the 300 left of
		// the release.
		if _, _, err := d.Allocate(ctx, at(op, now), valid(t, &subjects.AllocateRequest{SizeBytes: 300 * mib, Priority: -50})); !errors.Is(err, device.ErrOutOfMemory) {
			t.Errorf("300 MiB below the holder: %v, want refused", err)
		}
		allocateAs(t, d, op, now, subjects.AllocateRequest{SizeBytes: 200 * mib, Priority: -50})
		// Above the holder: what is left of the release too.
		above := allocateAs(t, d, tenantB, now, subjects.AllocateRequest{SizeBytes: 100 * mib, Priority: 5})
		if _, _, err := d.Allocate(ctx, at(op, now), valid(t, &subjects.AllocateRequest{SizeBytes: 26 * mib})); !errors.Is(err, device.ErrOutOfMemory) {
			t.Errorf("26 MiB beside 24 MiB that are nobody's: %v, want refused", err)
		}
		allocateAs(t, d, op, now, subjects.AllocateRequest{SizeBytes: 24 * mib})
		audit(t, d)
		// The waiter and the claim above leave: the holder takes all 800
		// MiB back before anyone else.
		for _, id := range []string{high, above.AllocationID} {
			if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: id}), tenantB); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := d.Allocate(ctx, at(op, now), valid(t, &subjects.AllocateRequest{SizeBytes: 2 * mib})); !errors.Is(err, device.ErrOutOfMemory) {
			t.Errorf("2 MiB while the holder is owed all that is free: %v, want refused", err)
		}
		r := d.Step(ctx, now.Add(time.Second))
		if len(r.Asks) != 1 || r.Asks[0].Action != subjects.ActionRestore || allocationSize(t, d, h.AllocationID) != 800*mib {
			t.Errorf("the holder was not restored: asks %+v, size %d", r.Asks, allocationSize(t, d, h.AllocationID))
		}
		audit(t, d)
	})

	t.Run("a holder of equal or higher priority is never asked", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		holderOf(t, d, tenantA, 400*mib, 0, 10)
		holderOf(t, d, tenantA, 400*mib, 0, 20)
		wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		if asks, _, _ := d.Handoff(ctx, t0); len(asks) != 0 {
			t.Errorf("asked %+v", asks)
		}
	})

	t.Run("only as many holders as needed, lowest priority first", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		low := holderOf(t, d, tenantA, 400*mib, 0, -5)
		holderOf(t, d, tenantA, 400*mib, 0, 0)
		wait(t, d, tenantB, "w", t0, 400*mib, 60, 10) // short by about 176 MiB
		asks, _, _ := d.Handoff(ctx, t0)
		if len(asks) != 1 || asks[0].Holder.AllocationID != low.AllocationID {
			t.Errorf("asked %+v, want the lowest priority alone", asks)
		}
	})

	t.Run("holders that cannot cover the shortfall are not asked", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		holderOf(t, d, tenantA, 300*mib, 200*mib, 0) // 100 MiB to give
		allocateAs(t, d, op, t0, subjects.AllocateRequest{SizeBytes: 600 * mib})
		wait(t, d, tenantB, "w", t0, 400*mib, 60, 10)
		if asks, _, _ := d.Handoff(ctx, t0); len(asks) != 0 {
			t.Errorf("asked %+v", asks)
		}
	})

	for _, tc := range []struct {
		name   string
		answer error
		reason string
	}{
		{"no release by the deadline fails, and the waiter waits on", nil, ledger.ReasonNotVerified},
		{"a refusal fails", errors.New("busy"), ledger.ReasonRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDevice(t, gib, func(c *ledger.Config) { c.ReclaimTimeout = 5 * time.Second })
			h := holderOf(t, d, tenantA, 800*mib, 100*mib, 0)
			ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
			d.Handoff(ctx, t0)
			d.Answered(h.AllocationID, tc.answer, t0) // it says yes (or no) and keeps everything
			when := t0.Add(6 * time.Second)
			if tc.answer != nil {
				when = t0.Add(time.Second)
			}
			_, evs, _ := d.Handoff(ctx, when)
			if len(evs) != 1 || evs[0].Type != ledger.HandoffFailed || len(evs[0].Reason) < len(tc.reason) || evs[0].Reason[:len(tc.reason)] != tc.reason {
				t.Fatalf("events %+v", evs)
			}
			if _, ok := decided(d.Admit(ctx, when), ticket); ok {
				t.Error("the waiter was answered")
			}
			if asks, _, _ := d.Handoff(ctx, when.Add(time.Second)); len(asks) != 0 {
				t.Errorf("asked again at once: %+v", asks)
			}
		})
	}

	t.Run("a process that still uses the memory is not trusted", func(t *testing.T) {
		d, b := newDevice(t, gib, func(c *ledger.Config) { c.ReclaimTolerance = mib })
		h := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 800 * mib, AllocationType: subjects.Reservation, PID: 77,
			Reclaim: &subjects.Reclaim{Subject: "holders.A.model", KeepBytes: 100 * mib}})
		b.SetProcess(0, 77, 800*mib)
		wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		d.Handoff(ctx, t0)
		if _, _, err := d.Resize(ctx, at(tenantA, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 100 * mib})); err != nil {
			t.Fatal(err)
		}
		if _, evs, _ := d.Handoff(ctx, t0.Add(2*time.Second)); len(evs) != 0 {
			t.Errorf("verified while the process holds 800 MiB: %v", kinds(evs))
		}
		b.SetProcess(0, 77, 100*mib)
		if _, evs, _ := d.Handoff(ctx, t0.Add(4*time.Second)); len(evs) != 1 || evs[0].Type != ledger.HandoffCompleted {
			t.Errorf("after the process let go: %v", kinds(evs))
		}
	})

	t.Run("a process's children are its memory", func(t *testing.T) {
		// pid 77 serves HTTP; its engine, pid 78, holds the memory (vLLM's
		// engine core); 79 is unrelated.
		parents := map[int]int{78: 77, 77: 1, 79: 1}
		d, b := newDevice(t, gib, func(c *ledger.Config) {
			c.ReclaimTolerance = mib
			c.ParentOf = func(pid int) (int, bool) { p, ok := parents[pid]; return p, ok }
		})
		h := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 800 * mib, AllocationType: subjects.Reservation, PID: 77,
			Reclaim: &subjects.Reclaim{Subject: "holders.A.model", KeepBytes: 100 * mib}})
		b.SetProcess(0, 77, 10*mib)
		b.SetProcess(0, 78, 700*mib)
		b.SetProcess(0, 79, 50*mib)
		wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		d.Handoff(ctx, t0)
		if _, _, err := d.Resize(ctx, at(tenantA, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 100 * mib})); err != nil {
			t.Fatal(err)
		}
		if _, evs, _ := d.Handoff(ctx, t0.Add(2*time.Second)); len(evs) != 0 {
			t.Errorf("verified while the engine child holds 700 MiB: %v", kinds(evs))
		}
		b.SetProcess(0, 78, 90*mib) // 10 + 90 of the tree, the unrelated 50 not counted
		if _, evs, _ := d.Handoff(ctx, t0.Add(4*time.Second)); len(evs) != 1 || evs[0].Type != ledger.HandoffCompleted {
			t.Errorf("after the engine let go: %v", kinds(evs))
		}
		page := d.Allocations(context.Background(), ledger.Call{Who: tenantA, Now: time.Now()}, valid(t, &subjects.AllocationsRequest{AllocationIDs: []string{h.AllocationID}}))
		if len(page.Allocations) != 1 || page.Allocations[0].ObservedBytes != 100*mib {
			t.Errorf("observed %+v; want the tree's 100 MiB", page.Allocations)
		}
	})

	t.Run("a release is verified on a reading after the answer, looked at every VerifyEvery", func(t *testing.T) {
		d, b := newDevice(t, gib, func(c *ledger.Config) { c.ReclaimTolerance = mib })
		h := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 800 * mib, AllocationType: subjects.Reservation, PID: 77,
			Reclaim: &subjects.Reclaim{Subject: "holders.A.model", KeepBytes: 100 * mib}})
		d.Step(ctx, t0)              // telemetry read: pid 77 not started
		b.SetProcess(0, 77, 800*mib) // it starts, within TelemetryMaxAge
		wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		now := t0.Add(100 * time.Millisecond)
		if r := d.Step(ctx, now); len(r.Asks) != 1 {
			t.Fatalf("asks %+v", r.Asks)
		}
		if _, _, err := d.Resize(ctx, at(tenantA, now), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 100 * mib})); err != nil {
			t.Fatal(err)
		}
		r := d.Step(ctx, now)
		if len(r.Events) != 0 || len(r.Decisions) != 0 {
			t.Fatalf("verified on a reading from before the answer: %v %+v", kinds(r.Events), r.Decisions)
		}
		if want := now.Add(ledger.VerifyEvery); !r.Next.Equal(want) {
			t.Errorf("next look at %s; want %s (VerifyEvery)", r.Next.Format(time.StampMilli), want.Format(time.StampMilli))
		}
		b.SetProcess(0, 77, 100*mib)
		now = now.Add(ledger.VerifyEvery)
		r = d.Step(ctx, now)
		if len(r.Events) != 1 || r.Events[0].Type != ledger.HandoffCompleted || len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
			t.Fatalf("after the process let go: %v %+v", kinds(r.Events), r.Decisions)
		}
		if e := r.Events[0]; e.VerifySeconds != ledger.VerifyEvery.Seconds() || e.Seconds != 0 {
			t.Errorf("release %.3f s, verify %.3f s; want 0 and %.3f", e.Seconds, e.VerifySeconds, ledger.VerifyEvery.Seconds())
		}
	})

	t.Run("room that shows late is looked for every VerifyEvery", func(t *testing.T) {
		// The holder is freed, but its process is still exiting: the device
		// has the room a little later, with nothing to tell the worker.
		d, b := newDevice(t, gib, nil)
		h := holderOf(t, d, tenantA, 800*mib, 0, 0)
		b.SetExternalUsage(0, 0)
		ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		d.Step(ctx, t0)
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: h.AllocationID}), tenantA); err != nil {
			t.Fatal(err)
		}
		b.SetExternalUsage(0, 800*mib) // what the exiting process still holds
		now := t0.Add(time.Second)
		r := d.Step(ctx, now)
		if len(r.Decisions) != 0 || !r.Next.Equal(now.Add(ledger.VerifyEvery)) {
			t.Fatalf("decisions %+v, next %s", r.Decisions, r.Next.Format(time.StampMilli))
		}
		b.SetExternalUsage(0, 0)
		if _, ok := decided(d.Step(ctx, now.Add(ledger.VerifyEvery)).Decisions, ticket); !ok {
			t.Error("the waiter was not granted when the room showed")
		}
	})

	t.Run("a reservation naming a process everything descends from is not given everybody's memory", func(t *testing.T) {
		// B's server (200) and an unrelated process (300) were started by
		// init; A names pid 1, and another reservation names 400, whose
		// child 401 is its own and not A's.
		parents := map[int]int{200: 1, 300: 1, 400: 1, 401: 400}
		d, b := newDevice(t, gib, func(c *ledger.Config) {
			c.ParentOf = func(pid int) (int, bool) { p, ok := parents[pid]; return p, ok }
		})
		allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 100 * mib, AllocationType: subjects.Reservation, PID: 200})
		allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 100 * mib, AllocationType: subjects.Reservation, PID: 400})
		a := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 600 * mib, AllocationType: subjects.Reservation, PID: 1})
		b.SetProcess(0, 200, 100*mib)
		b.SetProcess(0, 300, 50*mib)
		b.SetProcess(0, 401, 100*mib)
		later := t0.Add(2 * time.Second) // past the telemetry's age
		u, err := d.Usage(ctx, later)
		if err != nil {
			t.Fatal(err)
		}
		if u.ReservationUnusedBytes != 600*mib {
			t.Errorf("reservations promise %d MiB unused; want A's whole 600 (B's are in use by their trees)", u.ReservationUnusedBytes/mib)
		}
		if got := d.Allocations(ctx, at(tenantA, later), &subjects.AllocationsRequest{AllocationIDs: []string{a.AllocationID}}).Allocations[0].ObservedBytes; got != 0 {
			t.Errorf("A (pid 1) is observed using %d MiB of others' memory", got/mib)
		}
	})

	t.Run("a holder freed while asked has released", func(t *testing.T) {
		d, _ := newDevice(t, gib, nil)
		h := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 800 * mib, Priority: -1,
			Reclaim: &subjects.Reclaim{Subject: "holders.A.model"}})
		ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
		d.Handoff(ctx, t0)
		if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: h.AllocationID}), tenantA); err != nil {
			t.Fatal(err)
		}
		if _, evs, grew := d.Handoff(ctx, t0.Add(time.Second)); !grew || len(evs) != 1 || evs[0].Type != ledger.HandoffCompleted {
			t.Errorf("events %v", kinds(evs))
		}
		if _, ok := decided(d.Admit(ctx, t0.Add(time.Second)), ticket); !ok {
			t.Error("the waiter was not granted")
		}
	})
}

// TestResize: a reservation shrinks at once and grows through the door;
// other allocations do not resize.
func TestResize(t *testing.T) {
	d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Quotas = map[string]int64{"A": 512 * mib} })
	r := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 256 * mib, AllocationType: subjects.Reservation})
	v := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: mib})
	for _, tc := range []struct {
		name string
		req  subjects.ResizeRequest
		who  ledger.Who
		want error
	}{
		{"shrink", subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 128 * mib}, tenantA, nil},
		{"grow within the quota", subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 400 * mib, PID: 9}, tenantA, nil},
		{"grow past the quota", subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 600 * mib}, tenantA, ledger.ErrQuotaExceeded},
		{"another tenant's", subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: mib}, tenantB, ledger.ErrAllocationNotFound},
		{"not a reservation", subjects.ResizeRequest{AllocationID: v.AllocationID, SizeBytes: 2 * mib}, tenantA, ledger.ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, err := d.Resize(ctx, at(tc.who, t0), valid(t, &tc.req))
			if !errors.Is(err, tc.want) || (err == nil && a.SizeBytes != tc.req.SizeBytes) {
				t.Errorf("%+v, %v; want %v", a, err, tc.want)
			}
		})
	}
	if u, _ := d.TenantUsage(tenantA); u.AllocatedBytes != 400*mib+mib {
		t.Errorf("A holds %d", u.AllocatedBytes)
	}
}

// TestResizeWaits: a growth that does not fit waits in the queue when
// asked, and is granted when room comes or refused at its deadline; a
// retry of the same request joins its wait.
func TestResizeWaits(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	r := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 256 * mib, AllocationType: subjects.Reservation})
	filler := allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 700 * mib})
	grow := subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 512 * mib, WaitSeconds: 10}
	call := ledger.Call{Who: tenantA, Now: t0, RequestID: "grow-1"}
	_, ticket, err := d.Resize(ctx, call, valid(t, &grow))
	if err != nil || ticket == 0 {
		t.Fatalf("ticket %d, %v; want a wait", ticket, err)
	}
	if _, again, err := d.Resize(ctx, call, valid(t, &grow)); err != nil || again != ticket {
		t.Errorf("the retry: ticket %d, %v; want %d", again, err, ticket)
	}
	other := grow
	other.SizeBytes = 600 * mib
	if _, _, err := d.Resize(ctx, call, valid(t, &other)); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("another resize with the same request_id: %v", err)
	}
	if ds := d.Admit(ctx, t0.Add(time.Second)); len(ds) != 0 {
		t.Fatalf("granted without room: %+v", ds)
	}
	if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: filler.AllocationID}, tenantB); err != nil {
		t.Fatal(err)
	}
	ds := d.Admit(ctx, t0.Add(2*time.Second))
	if len(ds) != 1 || ds[0].Ticket != ticket || ds[0].Err != nil || ds[0].Allocation.SizeBytes != 512*mib || ds[0].Allocation.WaitedSeconds != 2 {
		t.Fatalf("after the room came: %+v", ds)
	}
	// A growth past the device waits until its deadline, then is refused.
	huge := subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 1000 * mib, WaitSeconds: 1}
	allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 400 * mib})
	if _, ticket, err = d.Resize(ctx, ledger.Call{Who: tenantA, Now: t0}, valid(t, &huge)); err != nil || ticket == 0 {
		t.Fatalf("ticket %d, %v", ticket, err)
	}
	ds = d.Admit(ctx, t0.Add(time.Second))
	if len(ds) != 1 || !errors.Is(ds[0].Err, device.ErrOutOfMemory) {
		t.Fatalf("at the deadline: %+v", ds)
	}
	// Past the device's whole memory: refused at once, whatever the wait.
	past := subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 2 * gib, WaitSeconds: 60}
	if _, ticket, err := d.Resize(ctx, ledger.Call{Who: tenantA, Now: t0}, valid(t, &past)); ticket != 0 || !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("a growth past the device: ticket %d, %v; want refused at once", ticket, err)
	}
	if got := allocationSize(t, d, r.AllocationID); got != 512*mib {
		t.Errorf("the reservation is %d MiB after a refused growth; want 512", got/mib)
	}
}

// TestAResizeWaiterPastTheGuardIsNotBehindItself: a growth that has
// waited past the starvation guard is granted when room comes (its claim
// carries its place in the queue, as an allocate waiter's does); one whose
// reservation is freed meanwhile is refused at once, not at its deadline.
func TestAResizeWaiterPastTheGuardIsNotBehindItself(t *testing.T) {
	d, _ := newDevice(t, gib, nil) // StarvationGuard: the default 10 s
	r := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 256 * mib, AllocationType: subjects.Reservation})
	filler := allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 700 * mib})
	grow := subjects.ResizeRequest{AllocationID: r.AllocationID, SizeBytes: 512 * mib, WaitSeconds: 60}
	_, ticket, err := d.Resize(ctx, ledger.Call{Who: tenantA, Now: t0, RequestID: "g"}, valid(t, &grow))
	if err != nil || ticket == 0 {
		t.Fatalf("ticket %d, %v; want a wait", ticket, err)
	}
	if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: filler.AllocationID}, tenantB); err != nil {
		t.Fatal(err)
	}
	if dec, ok := decided(d.Admit(ctx, t0.Add(11*time.Second)), ticket); !ok || dec.Err != nil {
		t.Fatalf("the growth was not granted with room for it after the guard: %+v", dec)
	}

	// Its reservation freed while the growth waits: refused at once.
	other := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 256 * mib, AllocationType: subjects.Reservation})
	allocateAs(t, d, tenantB, t0, subjects.AllocateRequest{SizeBytes: 200 * mib})
	big := subjects.ResizeRequest{AllocationID: other.AllocationID, SizeBytes: 600 * mib, WaitSeconds: 60}
	_, ticket, err = d.Resize(ctx, ledger.Call{Who: tenantA, Now: t0}, valid(t, &big))
	if err != nil || ticket == 0 {
		t.Fatalf("ticket %d, %v; want a wait", ticket, err)
	}
	if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: other.AllocationID}, tenantA); err != nil {
		t.Fatal(err)
	}
	if dec, ok := decided(d.Admit(ctx, t0.Add(time.Second)), ticket); !ok || !errors.Is(dec.Err, ledger.ErrAllocationNotFound) {
		t.Errorf("a growth of a freed reservation: %+v, %v; want refused at once, not found", dec, ok)
	}
}

func allocationSize(t *testing.T, d *ledger.Device, id string) int64 {
	t.Helper()
	page := d.Allocations(ctx, ledger.Call{Who: ledger.Who{}, Now: t0}, &subjects.AllocationsRequest{AllocationIDs: []string{id}})
	if len(page.Allocations) != 1 {
		t.Fatalf("allocation %s: %+v", id, page)
	}
	return page.Allocations[0].SizeBytes
}

// TestATenantsHolderIsItsOwn: a tenant's holder listens under
// holders.<tenant>.; another tenant's subject, a URL, or the worker's own
// or the server's subjects are refused, and nothing is allocated.
func TestATenantsHolderIsItsOwn(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	for _, tc := range []struct {
		spec subjects.Reclaim
		want error
	}{
		{subjects.Reclaim{Subject: "holders.B.model"}, ledger.ErrForbidden},
		{subjects.Reclaim{Subject: "holders.A"}, ledger.ErrForbidden},
		{subjects.Reclaim{ReleaseURL: "http://10.0.0.2:8000/sleep"}, ledger.ErrForbidden},
	} {
		req := subjects.AllocateRequest{SizeBytes: mib, AllocationType: subjects.Reservation, Reclaim: &tc.spec}
		if _, _, err := d.Allocate(ctx, at(tenantA, t0), valid(t, &req)); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.spec, err, tc.want)
		}
	}
	for _, s := range []string{"$KV.memworker_nodes.n", "$JS.API.STREAM.DELETE.MEMORY_PRESSURE", "memory.allocation.n-gpu0.B", "_INBOX.x"} {
		req := subjects.AllocateRequest{SizeBytes: mib, AllocationType: subjects.Reservation, Reclaim: &subjects.Reclaim{Subject: s}}
		if err := req.Validate(); err == nil {
			t.Errorf("reclaim.subject %s accepted", s)
		}
	}
	if d.Len() != 0 {
		t.Errorf("%d allocations made", d.Len())
	}
	holderOf(t, d, tenantA, mib, 0, 0) // its own: fine
}

// TestStepGrantsWhatAReleaseFrees: one Step verifies a release and grants
// the waiter it made room for, and returns both.
func TestStepGrantsWhatAReleaseFrees(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	h := holderOf(t, d, tenantA, 800*mib, 0, 0)
	ticket, _ := wait(t, d, tenantB, "w", t0, 500*mib, 60, 10)
	if r := d.Step(ctx, t0); len(r.Asks) != 1 || len(r.Decisions) != 0 {
		t.Fatalf("first step: %+v", r)
	}
	if _, _, err := d.Resize(ctx, at(tenantA, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 0})); err != nil {
		t.Fatal(err)
	}
	r := d.Step(ctx, t0.Add(time.Second))
	if dec, ok := decided(r.Decisions, ticket); !ok || dec.Err != nil || len(r.Events) != 1 || r.Events[0].Type != ledger.HandoffCompleted {
		t.Errorf("second step: %+v", r)
	}
}

// TestCacheGoesBackToTheDevice: memory the worker's clients freed stays
// cached for CacheHold, then all but CacheKeep goes back to the device,
// whichever path freed it; off, it stays.
func TestCacheGoesBackToTheDevice(t *testing.T) {
	for _, tc := range []struct {
		name    string
		on      bool
		hold    time.Duration
		free    func(d *ledger.Device, id string) error
		wantMax int64 // cached after the hold
	}{
		{"deallocate, held 1 s", true, time.Second, deallocateAs(tenantA), 64 * mib},
		{"deallocate, at once", true, 0, deallocateAs(tenantA), 64 * mib},
		{"a lease that expired", true, time.Second, func(d *ledger.Device, _ string) error { _, err := d.Expire(t0.Add(time.Hour)); return err }, 64 * mib},
		{"clear", true, time.Second, func(d *ledger.Device, _ string) error {
			_, err := d.Clear(ctx, valid(t, &subjects.ClearRequest{ReleaseCached: new(bool)}), tenantA)
			return err
		}, 64 * mib},
		{"off: kept", false, time.Second, deallocateAs(tenantA), 512 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDevice(t, gib, func(c *ledger.Config) { c.ReturnCache, c.CacheHold, c.CacheKeep = tc.on, tc.hold, 64*mib })
			a := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 512 * mib, TTLSeconds: 60})
			if err := tc.free(d, a.AllocationID); err != nil {
				t.Fatal(err)
			}
			r := d.Step(ctx, t0)
			if tc.on && tc.hold > 0 && (r.Released != 0 || !r.Next.Equal(t0.Add(tc.hold))) {
				t.Errorf("at the free: released %d, next look %v; want 0 and the hold's end", r.Released, r.Next)
			}
			d.Step(ctx, t0.Add(tc.hold))
			u, err := d.Usage(ctx, t0.Add(tc.hold))
			if err != nil {
				t.Fatal(err)
			}
			if u.CachedBytes > tc.wantMax || (!tc.on && u.CachedBytes != 512*mib) {
				t.Errorf("cached after the hold: %d MiB; want at most %d MiB", u.CachedBytes/mib, tc.wantMax/mib)
			}
			if next := d.NextDeadline(); !next.IsZero() {
				t.Errorf("a next look at %v with nothing to do: the loop would wake for nothing", next)
			}
		})
	}
}

func deallocateAs(who ledger.Who) func(d *ledger.Device, id string) error {
	return func(d *ledger.Device, id string) error {
		_, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: id}, who)
		return err
	}
}

// TestAnotherProcessGrowingTakesTheCacheAtOnce: when a reading finds other
// processes using more than at the last one, the cache beyond CacheKeep
// goes back at once, without waiting out the hold.
func TestAnotherProcessGrowingTakesTheCacheAtOnce(t *testing.T) {
	d, b := newDevice(t, gib, func(c *ledger.Config) { c.ReturnCache, c.CacheHold, c.CacheKeep = true, time.Hour, 64*mib })
	a := allocateAs(t, d, tenantA, t0, subjects.AllocateRequest{SizeBytes: 512 * mib})
	if _, err := d.Deallocate(&subjects.DeallocateRequest{AllocationID: a.AllocationID}, tenantA); err != nil {
		t.Fatal(err)
	}
	r, err := d.Read(ctx, t0)
	if err != nil || r.Released != 0 || r.Usage.CachedBytes != 512*mib {
		t.Fatalf("first reading: released %d, cached %d, %v; want the cache kept for the hour", r.Released, r.Usage.CachedBytes, err)
	}
	b.SetExternalUsage(0, 100*mib) // a process outside the worker grows
	r, err = d.Read(ctx, t0.Add(time.Second))
	if err != nil || r.Released < 448*mib || r.Usage.CachedBytes > 64*mib {
		t.Errorf("after another process grew: released %d MiB, cached %d MiB, %v; want all but 64 MiB back", r.Released/mib, r.Usage.CachedBytes/mib, err)
	}
}
