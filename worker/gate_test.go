package worker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
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

// TestTheGateSaysWhenItChanges: a channel from Changed closes at the next
// change, not before, and one asked for after it waits for the one after.
func TestTheGateSaysWhenItChanges(t *testing.T) {
	var g leaseGate
	first, again := g.Changed(), g.Changed()
	if first != again {
		t.Error("two waiters before an opening got different channels")
	}
	select {
	case <-first:
		t.Fatal("closed before the gate changed")
	default:
	}
	g.changed()
	select {
	case <-first:
	default:
		t.Fatal("not closed when the gate changed")
	}
	next := g.Changed()
	select {
	case <-next:
		t.Error("a channel asked for after the change is closed already")
	default:
	}
	g.changed()
	g.changed() // none asked since: nothing to close
	<-next
}

// TestATransferGoesOnWhenTheGateOpens: a transfer asked while the node's
// lease is unconfirmed (JetStream away) waits for its destination, and
// completes once a renewal opens the gate again: told by the gate, since
// it would ask again by itself only after an hour here.
func TestATransferGoesOnWhenTheGateOpens(t *testing.T) {
	defer func(old time.Duration) { transferDoorRetry = old }(transferDoorRetry)
	transferDoorRetry = time.Hour
	srv := natstest.JetStream(t)
	nc, w := servingOn(t, srv, nil)
	var a subjects.Allocation
	if r := ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":1048576}}`, &a); !r.Success {
		t.Fatalf("allocate: %+v", r)
	}
	store := srv.JetStreamConfig().StoreDir
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); w.gate.Closed(time.Now()) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the gate did not close with JetStream away")
		}
	}
	var st subjects.TransferStatus
	if r := ask(t, nc, subjects.Transfer, `{"data":{"allocation_id":"`+a.AllocationID+`","target_allocation_type":"PINNED"}}`, &st); !r.Success {
		t.Fatalf("transfer: %+v", r)
	}
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: store}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var got subjects.TransferStatus
		ask(t, nc, subjects.GetTransfer, `{"data":{"transfer_id":"`+st.TransferID+`"}}`, &got)
		if got.Status == subjects.TransferCompleted {
			return
		}
		if got.Status == subjects.TransferFailed || time.Now().After(deadline) {
			t.Fatalf("once the lease was renewed: %+v, want completed", got)
		}
	}
}
