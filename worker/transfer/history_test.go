package transfer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/transfer"
)

// submitN lends n fresh allocations of dev to transfers of who, and
// returns their statuses and the first refusal.
func submitN(t *testing.T, m *transfer.Manager, dev *plain, who ledger.Who, n int, now time.Time) ([]subjects.TransferStatus, error) {
	t.Helper()
	var out []subjects.TransferStatus
	for range n {
		a, _, err := dev.d.Allocate(context.Background(), ledger.Call{Who: who, Now: now}, &subjects.AllocateRequest{SizeBytes: 4096})
		if err != nil {
			t.Fatal(err)
		}
		lent, err := dev.d.Lend(a.AllocationID, ledger.Target{DeviceID: dev.ID(), TotalBytes: 1 << 30, Type: subjects.Pinned}, subjects.ModeCopy, who)
		if err != nil {
			t.Fatal(err)
		}
		st, err := m.Submit(transfer.Request{Src: dev, Dst: dev, Lent: lent, Type: subjects.Pinned, Mode: subjects.ModeCopy, Call: ledger.Call{Who: who, Now: now}})
		if err != nil {
			dev.d.Return(a.AllocationID)
			return out, err
		}
		out = append(out, st)
	}
	return out, nil
}

// TestTransferHistory: finished transfers are known for the retention and
// within the byte bound, oldest forgotten first; queued ones are never
// forgotten; a tenant sees its own only.
func TestTransferHistory(t *testing.T) {
	b := sim.New(sim.Default(1, 1<<30))
	infos, _ := b.Devices(context.Background())
	dev := newDevice(t, b, infos)
	m := transfer.New(transfer.Config{Backend: b, Retention: time.Hour, HistoryBytes: 3 * 1024,
		Code: func(err error) (subjects.Code, string) { return subjects.CodeInternal, err.Error() }})
	t0 := time.Now()
	stop := make(chan struct{})
	close(stop)
	var done []subjects.TransferStatus
	for range 5 { // one at a time: they finish in this order
		st, err := submitN(t, m, dev, ledger.Who{Tenant: "A"}, 1, t0)
		if err != nil {
			t.Fatal(err)
		}
		m.Run(context.Background(), stop)
		done = append(done, st...)
	}
	queued, err := submitN(t, m, dev, ledger.Who{}, 1, t0)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range done {
		_, known := m.Get(st.TransferID, dev.ID(), ledger.Who{}, time.Now())
		if want := i >= 2; known != want {
			t.Errorf("finished job %d known: %v, want %v (3 fit the bound)", i, known, want)
		}
	}
	if _, ok := m.Get(done[4].TransferID, dev.ID(), ledger.Who{Tenant: "B"}, time.Now()); ok {
		t.Error("tenant B sees tenant A's transfer")
	}
	later := time.Now().Add(2 * time.Hour)
	if _, ok := m.Get(done[4].TransferID, dev.ID(), ledger.Who{}, later); ok {
		t.Error("two hours later a finished job is still known")
	}
	if _, ok := m.Get(queued[0].TransferID, dev.ID(), ledger.Who{}, later); !ok {
		t.Error("a queued job was forgotten")
	}
}

// TestATenantHasAQuarterOfTheQueue: one tenant's transfers fill a quarter
// of the queue at most (OVERLOADED past it), so another's still go in.
func TestATenantHasAQuarterOfTheQueue(t *testing.T) {
	b := sim.New(sim.Default(1, 1<<30))
	infos, _ := b.Devices(context.Background())
	dev := newDevice(t, b, infos)
	m := newManager(b)
	now := time.Now()
	got, err := submitN(t, m, dev, ledger.Who{Tenant: "bob"}, transfer.QueueLen, now)
	if !errors.Is(err, ledger.ErrOverloaded) || len(got) != transfer.QueueLen/4 {
		t.Fatalf("bob queued %d, then %v; want %d, then overloaded", len(got), err, transfer.QueueLen/4)
	}
	if _, err := submitN(t, m, dev, ledger.Who{Tenant: "alice"}, 1, now); err != nil {
		t.Errorf("alice's transfer behind bob's: %v", err)
	}
}
