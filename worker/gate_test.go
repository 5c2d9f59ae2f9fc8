package worker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/node"
)

// TestTheGateReadsItsOwnClock: a grant made late in a long operation
// passes the gate as the lease is then, whatever time the request began
// (found by review: a restore's third model was granted after the gate
// had closed); a released lease closes it for good.
func TestTheGateReadsItsOwnClock(t *testing.T) {
	nc := natstest.Connect(t, natstest.JetStream(t))
	began := time.Now()
	l, err := (&node.Node{Name: "n", Service: ServiceName, JetStream: true, Log: slog.New(slog.DiscardHandler)}).Take(context.Background(), nc)
	if err != nil || l == nil {
		t.Fatalf("taking the lease: %v", err)
	}
	g := &leaseGate{node: "n"}
	g.lease.Store(l)
	if err := g.Closed(began); err != nil {
		t.Fatalf("right after the take: %v", err)
	}
	time.Sleep(time.Until(l.GrantsUntil()) + 10*time.Millisecond) // nobody renews
	if err := g.Closed(began); err == nil {
		t.Error("open past GrantsUntil for a request that began before")
	}
	l.Release()
	if err := g.Closed(time.Now()); !errors.Is(err, device.ErrUnavailable) {
		t.Errorf("after Release: %v, want closed for good", err)
	}
}

// TestTheGateSaysWhenItOpens: a channel from Opened closes at the next
// opening, not before, and one asked for after it waits for the one after.
func TestTheGateSaysWhenItOpens(t *testing.T) {
	var g leaseGate
	first, again := g.Opened(), g.Opened()
	if first != again {
		t.Error("two waiters before an opening got different channels")
	}
	select {
	case <-first:
		t.Fatal("closed before the gate opened")
	default:
	}
	g.open()
	select {
	case <-first:
	default:
		t.Fatal("not closed when the gate opened")
	}
	next := g.Opened()
	select {
	case <-next:
		t.Error("a channel asked for after the opening is closed already")
	default:
	}
	g.open()
	g.open() // none asked since: nothing to close
	<-next
}
