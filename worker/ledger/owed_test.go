package ledger_test

import (
	"errors"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// A waiter of the holder's own priority that has waited past the guard
// does not hold the holder's restore back at the door (the queue's rule)
// while the room owed to the holder holds the waiter back: the restore is
// first in the queue of its priority.
func TestAWaiterOfTheHoldersPriorityDoesNotHoldItsRestoreBack(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	h := holderOf(t, d, tenantA, 800*mib, 0, 0)
	w1 := releaseFor(t, d, h, tenantA, t0)
	// B waits at the holder's priority for 400 MiB (224 are everyone's).
	low, _ := wait(t, d, tenantB, "w2", t0.Add(time.Second), 400*mib, 120, 0)
	if low == 0 {
		t.Fatal("the waiter of the holder's priority did not wait")
	}
	// The waiter above leaves once w2 has waited past the guard.
	now := t0.Add(20 * time.Second)
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: w1}), tenantB); err != nil {
		t.Fatal(err)
	}
	r := d.Step(ctx, now)
	if len(r.Asks) != 1 || r.Asks[0].Action != subjects.ActionRestore || allocationSize(t, d, h.AllocationID) != 800*mib {
		t.Errorf("the holder is at %d MiB (asks %+v), want restored at once", allocationSize(t, d, h.AllocationID)/mib, r.Asks)
	}
	if _, granted := decided(r.Decisions, low); granted {
		t.Error("the waiter of the holder's priority took the room owed to it")
	}
	audit(t, d)
}

// The holder's tenant fills its quota from room that was everyone's while
// the holder is released: the restore cannot pass the quota, so its
// release ends, and the 800 MiB are not kept from everyone else for as
// long as the tenant keeps the 200 MiB.
func TestNothingIsOwedToAHolderItsQuotaCannotRestore(t *testing.T) {
	d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Quotas = map[string]int64{"A": 900 * mib} })
	h := holderOf(t, d, tenantA, 800*mib, 0, 0)
	w1 := releaseFor(t, d, h, tenantA, t0)
	now := t0.Add(2 * time.Second)
	allocateAs(t, d, tenantA, now, subjects.AllocateRequest{SizeBytes: 200 * mib})
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: w1}), tenantB); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d.Step(ctx, now.Add(time.Duration(i)*time.Minute))
	}
	if size := allocationSize(t, d, h.AllocationID); size != 0 {
		t.Errorf("the holder is at %d MiB: its restore passed A's quota of 900 MiB beside 200", size/mib)
	}
	later := now.Add(time.Hour)
	if _, _, err := d.Allocate(ctx, at(tenantB, later), valid(t, &subjects.AllocateRequest{SizeBytes: 100 * mib})); err != nil {
		t.Errorf("an hour later, B's 100 MiB on an 824 MiB-free device: %v", err)
	}
	audit(t, d)
}

// Two released holders of one priority, each owed 400 MiB: when another
// process takes 300 MiB of the device, each restore fits the room alone
// but not both; the door does not hold one back by what the other is
// owed, so one is restored.
func TestHoldersOfOnePriorityAreRestoredInTurn(t *testing.T) {
	d, b := newDevice(t, gib, nil)
	h1 := holderOf(t, d, tenantA, 400*mib, 0, 0)
	h2 := holderOf(t, d, tenantA, 400*mib, 0, 0)
	_, ticket, err := d.Allocate(ctx, ledger.Call{Who: tenantB, Now: t0, RequestID: "big"}, valid(t, &subjects.AllocateRequest{
		SizeBytes: 1000 * mib, AllocationType: subjects.Reservation, WaitSeconds: 60, TTLSeconds: 600, Priority: 10}))
	if ticket == 0 {
		t.Fatalf("the waiter did not wait: %v", err)
	}
	if r := d.Step(ctx, t0); len(r.Asks) != 2 {
		t.Fatalf("asks %+v, want both holders", r.Asks)
	}
	for _, h := range []subjects.Allocation{h1, h2} {
		if _, _, err := d.Resize(ctx, at(tenantA, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 0})); err != nil {
			t.Fatal(err)
		}
		d.Answered(h.AllocationID, nil, t0)
	}
	r := d.Step(ctx, t0.Add(time.Second))
	if len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
		t.Fatalf("the waiter: %+v", r.Decisions)
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: r.Decisions[0].Allocation.AllocationID}), tenantB); err != nil {
		t.Fatal(err)
	}
	b.SetExternalUsage(0, 300*mib) // another process: 724 MiB available
	now := t0.Add(5 * time.Second)
	for i := range 3 {
		d.Step(ctx, now.Add(time.Duration(i)*time.Minute))
	}
	s1, s2 := allocationSize(t, d, h1.AllocationID), allocationSize(t, d, h2.AllocationID)
	if (s1 == 400*mib) == (s2 == 400*mib) {
		t.Errorf("holders at %d and %d MiB with 724 MiB available, want one restored", s1/mib, s2/mib)
	}
	audit(t, d)
}

// A holder above another borrows the lower one's released room; asked to
// release in turn, it keeps the loan while the bytes are owed to it, so
// they are not owed to both, and room that was free to everyone before
// the second release stays everyone's.
func TestRoomABorrowingHolderReleasesIsOwedOnce(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	releasedAndLeft(t, d, 600*mib)
	now := t0.Add(time.Second)
	// A holder at 5 takes the low holder's 600 MiB (a loan): 424 MiB stay
	// everyone's.
	high := holderOf(t, d, tenantB, 600*mib, 0, 5)
	// A waiter at 10 needs 700: the high holder is asked, and releases.
	askedFor(t, d, high, now, 700*mib, 60)
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: high.AllocationID, SizeBytes: 0})); err != nil {
		t.Fatal(err)
	}
	d.Answered(high.AllocationID, nil, now)
	if r := d.Step(ctx, now.Add(time.Second)); len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
		t.Fatalf("w2: %+v", r.Decisions)
	}
	audit(t, d)
	// 1024 - 700 = 324 MiB available; the high holder gave up 600, of
	// which w2 took 600 and 100 more came from the 424 that were free:
	// 324 MiB are nobody's.
	later := now.Add(time.Second)
	if _, _, err := d.Allocate(ctx, at(op, later), valid(t, &subjects.AllocateRequest{SizeBytes: 300 * mib, AllocationType: subjects.Reservation, Priority: -1})); err != nil {
		t.Errorf("300 MiB below both holders, beside 324 MiB that were free before either release was taken: %v", err)
	}
	audit(t, d)
}

// The head waiter sits between two holders: room owed to the holder above
// it is not the waiter's when the handoff sizes its shortfall, so the
// holder below it, whose release lets it in, is asked.
func TestTheHandoffSizesTheShortfallWithoutOwedRoom(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	hx := holderOf(t, d, tenantA, 600*mib, 0, 5)
	// A waiter at 10 needs 500 (424 free): hx releases 600, the waiter
	// borrows 500 of them and stays; 100 stay owed to hx.
	releaseFor(t, d, hx, tenantA, t0)
	now := t0.Add(2 * time.Second)
	// A holder at 0 takes 300 of the room that is everyone's (424 - 100).
	hy := holderOf(t, d, tenantA, 300*mib, 0, 0)
	// 224 MiB available, 100 of them owed to hx: a waiter at 3 needing 200
	// waits; hy (below it) giving its 300 would let it in.
	ticket, _ := wait(t, d, op, "w3", now, 200*mib, 60, 3)
	if ticket == 0 {
		t.Fatal("the waiter at 3 did not wait")
	}
	r := d.Step(ctx, now)
	if len(r.Asks) != 1 || r.Asks[0].Holder.AllocationID != hy.AllocationID {
		t.Errorf("asks %+v; want hy asked to release for the waiter above it", r.Asks)
	}
	audit(t, d)
}

// Holders of one priority are restored in turn, but only a restore passes
// what another holder of its priority is owed: another tenant's holder at
// the released holder's priority cannot grow by resize into its room.
func TestAHolderOfTheSamePriorityCannotGrowIntoOwedRoom(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	v := holderOf(t, d, tenantA, 800*mib, 0, 0)
	w1 := releaseFor(t, d, v, tenantA, t0) // w1 borrows 500 of v's 800: 300 owed to v, 224 everyone's
	now := t0.Add(2 * time.Second)
	// B's holder at v's priority takes 64 of the 224 that are everyone's.
	hb := allocateAs(t, d, tenantB, now, subjects.AllocateRequest{SizeBytes: 64 * mib, AllocationType: subjects.Reservation,
		Reclaim: &subjects.Reclaim{Subject: "holders.B.model"}})
	d.Step(ctx, now) // v's restore (800) does not fit 460: it stays released
	if allocationSize(t, d, v.AllocationID) != 0 {
		t.Fatal("v was restored")
	}
	// 460 MiB available, 300 of them owed to v: 160 are everyone's.
	// Control: a plain reservation of B at v's priority may not grow by 400.
	plain := allocateAs(t, d, tenantB, now, subjects.AllocateRequest{SizeBytes: 2 * mib, AllocationType: subjects.Reservation})
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: plain.AllocationID, SizeBytes: 402 * mib})); err == nil {
		t.Fatal("control: a plain reservation grew into v's room")
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: plain.AllocationID}), tenantB); err != nil {
		t.Fatal(err)
	}
	// B's holder at v's priority may not either (it is not v's restore).
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: hb.AllocationID, SizeBytes: 464 * mib})); err == nil {
		t.Errorf("B's holder at v's priority grew by 400 MiB into the 300 MiB owed to v (160 MiB are everyone's)")
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: w1}), tenantB); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d.Step(ctx, now.Add(time.Duration(i+1)*time.Minute))
	}
	if s := allocationSize(t, d, v.AllocationID); s != 800*mib {
		t.Errorf("after the waiter left, v is at %d MiB, want restored to 800", s/mib)
	}
	audit(t, d)
}

// A holder that borrowed from a lower holder's release is asked to release
// in turn, gives up 100 MiB and refuses: the 100 it gave up repay its loan
// (latest first), as a plain shrink does, so they stay owed to the lower
// holder and a claim at its priority cannot take them.
func TestAFailedReleaseRepaysWhatItGaveUp(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	x := releasedAndLeft(t, d, 600*mib)
	now := t0.Add(time.Second)
	// y at 5 takes 800: 600 of them x's room (a loan), 200 everyone's.
	y := holderOf(t, d, tenantB, 800*mib, 0, 5)
	askedFor(t, d, y, now, 500*mib, 5)
	// y gives up 100 and refuses.
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: y.AllocationID, SizeBytes: 700 * mib})); err != nil {
		t.Fatal(err)
	}
	d.Answered(y.AllocationID, errors.New("busy"), now)
	d.Step(ctx, now.Add(time.Second))
	audit(t, d)
	// w2's wait ends; x's restore (600) does not fit 324.
	later := now.Add(10 * time.Second)
	d.Step(ctx, later)
	if allocationSize(t, d, x.AllocationID) != 0 {
		t.Fatal("x was restored")
	}
	// 324 MiB available. x gave up 600; y holds 700, of which at most 500
	// came from x (y gave up 100, which repays its latest loan first, as a
	// plain shrink does): 100 MiB are x's, 224 everyone's.
	if _, _, err := d.Allocate(ctx, at(op, later), valid(t, &subjects.AllocateRequest{SizeBytes: 300 * mib, AllocationType: subjects.Reservation, Priority: 0})); err == nil {
		t.Errorf("300 MiB at x's priority were granted from 324 available, 100 of which y gave back of x's room")
	}
	audit(t, d)
}

// Control for the above: y shrinks by 100 without being asked; the 100 go
// back to x, and the same claim is refused.
func TestAPlainShrinkRepaysWhatItGaveUp(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	releasedAndLeft(t, d, 600*mib)
	now := t0.Add(time.Second)
	y := holderOf(t, d, tenantB, 800*mib, 0, 5)
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: y.AllocationID, SizeBytes: 700 * mib})); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Allocate(ctx, at(op, now), valid(t, &subjects.AllocateRequest{SizeBytes: 300 * mib, AllocationType: subjects.Reservation, Priority: 0})); err == nil {
		t.Errorf("300 MiB at x's priority were granted")
	}
	audit(t, d)
}

// A borrowing holder keeps its loan while released; its restore takes
// back its own room and borrows nothing more from the lower holder, so
// the 200 still owed to the lower holder are not given to a claim at its
// priority.
func TestARestoredHolderDoesNotBorrowItsRoomTwice(t *testing.T) {
	d, _ := newDevice(t, gib, nil)
	x := releasedAndLeft(t, d, 800*mib)
	now := t0.Add(time.Second)
	// y at 5 takes 600 of x's 800 (a loan); 200 stay owed to x.
	y := holderOf(t, d, tenantB, 600*mib, 0, 5)
	askedFor(t, d, y, now, 700*mib, 60)
	if _, _, err := d.Resize(ctx, at(tenantB, now), valid(t, &subjects.ResizeRequest{AllocationID: y.AllocationID, SizeBytes: 0})); err != nil {
		t.Fatal(err)
	}
	d.Answered(y.AllocationID, nil, now)
	r := d.Step(ctx, now.Add(time.Second))
	if len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
		t.Fatalf("w2: %+v", r.Decisions)
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: r.Decisions[0].Allocation.AllocationID}), op); err != nil {
		t.Fatal(err)
	}
	later := now.Add(2 * time.Second)
	d.Step(ctx, later) // y is restored to 600; x (800) does not fit 424
	if allocationSize(t, d, y.AllocationID) != 600*mib || allocationSize(t, d, x.AllocationID) != 0 {
		t.Fatalf("y at %d, x at %d MiB", allocationSize(t, d, y.AllocationID)/mib, allocationSize(t, d, x.AllocationID)/mib)
	}
	audit(t, d)
	// 424 available; x gave up 800, y holds 600 of it: 200 owed to x, 224 everyone's.
	if _, _, err := d.Allocate(ctx, at(op, later), valid(t, &subjects.AllocateRequest{SizeBytes: 400 * mib, AllocationType: subjects.Reservation, Priority: 0})); err == nil {
		t.Errorf("400 MiB at x's priority were granted from 424 available, 200 of which are owed to x")
	}
	audit(t, d)
}

// releasedAndLeft makes a holder of A at priority 0, has B's waiter at 3
// (700 MiB) take its release, and has the waiter leave before the holder
// is restored: the holder is owed all it gave up.
func releasedAndLeft(t *testing.T, d *ledger.Device, size int64) subjects.Allocation {
	t.Helper()
	h := holderOf(t, d, tenantA, size, 0, 0)
	_, ticket, err := d.Allocate(ctx, ledger.Call{Who: tenantB, Now: t0, RequestID: "w1"}, valid(t, &subjects.AllocateRequest{
		SizeBytes: 700 * mib, AllocationType: subjects.Reservation, WaitSeconds: 60, TTLSeconds: 600, Priority: 3}))
	if ticket == 0 {
		t.Fatalf("w1 did not wait: %v", err)
	}
	d.Step(ctx, t0)
	if _, _, err := d.Resize(ctx, at(tenantA, t0), valid(t, &subjects.ResizeRequest{AllocationID: h.AllocationID, SizeBytes: 0})); err != nil {
		t.Fatal(err)
	}
	d.Answered(h.AllocationID, nil, t0)
	r := d.Step(ctx, t0.Add(time.Second))
	if len(r.Decisions) != 1 || r.Decisions[0].Err != nil {
		t.Fatalf("w1: %+v", r.Decisions)
	}
	if _, err := d.Deallocate(valid(t, &subjects.DeallocateRequest{AllocationID: r.Decisions[0].Allocation.AllocationID}), tenantB); err != nil {
		t.Fatal(err)
	}
	return h
}

// askedFor has the operator's waiter at 10 wait for size bytes, up to
// wait seconds, and checks that holder h is asked to release for it.
func askedFor(t *testing.T, d *ledger.Device, h subjects.Allocation, now time.Time, size int64, wait float64) {
	t.Helper()
	_, ticket, err := d.Allocate(ctx, ledger.Call{Who: op, Now: now, RequestID: "w2"}, valid(t, &subjects.AllocateRequest{
		SizeBytes: size, AllocationType: subjects.Reservation, WaitSeconds: wait, TTLSeconds: 600, Priority: 10}))
	if ticket == 0 {
		t.Fatalf("w2 did not wait: %v", err)
	}
	if r := d.Step(ctx, now); len(r.Asks) != 1 || r.Asks[0].Holder.AllocationID != h.AllocationID {
		t.Fatalf("asks %+v, want %s asked", r.Asks, h.AllocationID)
	}
}
