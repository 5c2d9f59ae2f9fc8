package transfer_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/monitor"
	"github.com/memworker/memworker/worker/transfer"
)

// gate is a door the test shuts and opens, with the signal of an opening.
// With openAfterRefusal it opens right after its first refusal, before
// the refused job waits.
type gate struct {
	shut             atomic.Bool
	openAfterRefusal bool
	mu               sync.Mutex
	opened           chan struct{}
}

func (g *gate) Closed(time.Time) error {
	if g.shut.Load() {
		if g.openAfterRefusal {
			defer g.open()
		}
		return errors.New("shut by the test")
	}
	return nil
}

func (g *gate) Opened() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened == nil {
		g.opened = make(chan struct{})
	}
	return g.opened
}

func (g *gate) open() {
	g.shut.Store(false)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened != nil {
		close(g.opened)
		g.opened = nil
	}
}

// TestATransferWaitsForTheDoorToOpen: a transfer whose destination the
// door refuses for now waits, without a destination, and goes on when the
// door says it opened, long before it would ask again by itself (an hour,
// here); an opening between the refusal and the wait is not missed.
func TestATransferWaitsForTheDoorToOpen(t *testing.T) {
	for _, between := range []bool{false, true} {
		t.Run(map[bool]string{false: "opened-later", true: "opened-between-refusal-and-wait"}[between], func(t *testing.T) {
			doorOpens(t, &gate{openAfterRefusal: between})
		})
	}
}

func doorOpens(t *testing.T, g *gate) {
	b := sim.New(sim.Default(1, 1<<30))
	infos, _ := b.Devices(context.Background())
	dev := &plain{d: ledger.New(ledger.Config{ID: "n-gpu0", Node: "n", Info: infos[0], Backend: b, Gate: g, Thresholds: monitor.DefaultThresholds()})}
	m := transfer.New(transfer.Config{Backend: b, Chunk: testChunk, Retention: time.Hour, HistoryBytes: 1 << 20,
		Code:        func(err error) (subjects.Code, string) { return subjects.CodeOverloaded, err.Error() },
		DoorChanged: g.Opened, DoorRetry: time.Hour})
	now := time.Now()
	a, _, err := dev.d.Allocate(context.Background(), ledger.Call{Now: now}, &subjects.AllocateRequest{SizeBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	lent, err := dev.d.Lend(a.AllocationID, ledger.Target{DeviceID: dev.ID(), TotalBytes: 1 << 30, Type: subjects.Pinned}, subjects.ModeCopy, ledger.Who{})
	if err != nil {
		t.Fatal(err)
	}
	g.shut.Store(true)
	st, err := m.Submit(transfer.Request{Src: dev, Dst: dev, Lent: lent, Type: subjects.Pinned, Mode: subjects.ModeCopy, Call: ledger.Call{Now: now}})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	ran := make(chan struct{})
	go func() { defer close(ran); m.Run(context.Background(), stop) }()
	defer func() { close(stop); <-ran }()

	status := func() subjects.TransferStatus {
		s, ok := m.Get(st.TransferID, dev.ID(), ledger.Who{}, time.Now())
		if !ok {
			t.Fatal("the transfer is not known")
		}
		return s
	}
	if !g.openAfterRefusal {
		time.Sleep(100 * time.Millisecond)
		if s := status(); s.Status != subjects.TransferRunning || s.DestinationAllocationID != "" {
			t.Fatalf("behind a shut door: %s with destination %q, want running without one", s.Status, s.DestinationAllocationID)
		}
		g.open()
	}
	deadline := time.Now().Add(20 * time.Second)
	for s := status(); s.Status != subjects.TransferCompleted; s = status() {
		if s.Status == subjects.TransferFailed || time.Now().After(deadline) {
			t.Fatalf("after the door opened: %+v, want completed", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
