package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/worker/node"
)

func connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, _ := connectTo(t)
	return nc
}

// connectTo starts a JetStream server and connects to it.
func connectTo(t *testing.T) (*nats.Conn, *server.Server) {
	t.Helper()
	srv := natstest.JetStream(t)
	return natstest.Connect(t, srv), srv
}

// watched is what Keep told a test: the loss, and each change between
// confirmed (true) and not (false).
type watched struct {
	lost      chan error
	confirmed chan bool
}

func watch() (node.Watch, watched) {
	w := watched{lost: make(chan error, 1), confirmed: make(chan bool, 16)}
	return node.Watch{
		Lost:        func(err error) { w.lost <- err },
		Unconfirmed: func(error) { w.confirmed <- false },
		Confirmed:   func() { w.confirmed <- true },
	}, w
}

// n1 is a worker of node n1 that is no standby.
func n1() *node.Node {
	return &node.Node{Name: "n1", Service: "memory", JetStream: true, Log: slog.New(slog.DiscardHandler)}
}

// takeN1 takes n1's lease, and returns it with the lease bucket.
func takeN1(t *testing.T, nc *nats.Conn) (*node.Lease, jetstream.KeyValue) {
	t.Helper()
	ctx := context.Background()
	l, err := n1().Take(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, node.NodeLeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	return l, kv
}

// TestOneLeasePerNode: the lease is one worker's; another that is no
// standby is refused once the holder has kept it a whole TTL; a standby
// takes it when it is given up; a renewal after another took it reports
// the loss.
func TestOneLeasePerNode(t *testing.T) {
	nc := connect(t)
	ctx := context.Background()
	n := func(standby bool) *node.Node {
		return &node.Node{Name: "n1", Standby: standby, Service: "memory", JetStream: true, Log: slog.New(slog.DiscardHandler)}
	}
	first, err := n(false).Take(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	keepCtx, stopKeeping := context.WithCancel(ctx)
	wa, seen := watch()
	go first.Keep(keepCtx, wa)
	if _, err := n(false).Take(ctx, nc); !errors.Is(err, node.ErrNodeTaken) {
		t.Fatalf("a second worker while the first renews: %v, want ErrNodeTaken", err)
	}
	standby := make(chan *node.Lease, 1)
	go func() {
		l, err := n(true).Take(ctx, nc)
		if err != nil {
			t.Error(err)
		}
		standby <- l
	}()
	select {
	case <-standby:
		t.Fatal("the standby took a lease that is held")
	case <-time.After(500 * time.Millisecond):
	}
	stopKeeping()
	first.Release()
	select {
	case l := <-standby:
		if l == nil {
			t.Fatal("no lease")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the standby did not take the released lease")
	}
	select {
	case err := <-seen.lost:
		t.Errorf("reported lost while it was kept: %v", err)
	case c := <-seen.confirmed:
		t.Errorf("reported confirmed %v while it was kept", c)
	default:
	}
}

// wantLost waits, at most 5 s, for Keep to report the lease lost.
func wantLost(t *testing.T, seen watched, what string) {
	t.Helper()
	select {
	case err := <-seen.lost:
		if !errors.Is(err, node.ErrLeaseLost) {
			t.Errorf("%s: lost with %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: not reported lost", what)
	}
}

// waitHeld waits until the key holds l's value (renewed or taken again).
func waitHeld(t *testing.T, kv jetstream.KeyValue, l *node.Lease) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e, err := kv.Get(context.Background(), "n1")
		if err == nil && bytes.Equal(e.Value(), node.LeaseValue(l)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key is not the lease's after 5 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestALapsedLease: when the key lapsed (the holder was cut off past the
// TTL) and another worker took it, the holder's renewal reports the loss;
// when none did, the holder takes it again and goes on.
func TestALapsedLease(t *testing.T) {
	for _, taken := range []bool{true, false} {
		t.Run(fmt.Sprintf("taken-%v", taken), func(t *testing.T) {
			nc := connect(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a, kv := takeN1(t, nc)
			if err := kv.Delete(ctx, "n1"); err != nil { // as if it lapsed
				t.Fatal(err)
			}
			if taken {
				if _, err := n1().Take(ctx, nc); err != nil {
					t.Fatal(err)
				}
			}
			wa, seen := watch()
			go a.Keep(ctx, wa)
			if !taken {
				waitHeld(t, kv, a)
				select {
				case err := <-seen.lost:
					t.Errorf("a lapsed lease nobody took was reported lost: %v", err)
				default:
				}
				return
			}
			wantLost(t, seen, "a lease another worker took")
		})
	}
}

// jetStreamAway disables JetStream on srv and waits, at most within, for
// the lease Keep watches (seen) to be reported unconfirmed, not lost; it
// returns JetStream's store, to enable it again.
func jetStreamAway(t *testing.T, srv *server.Server, seen watched, within time.Duration) string {
	t.Helper()
	store := srv.JetStreamConfig().StoreDir
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-seen.confirmed:
		if c {
			t.Fatal("confirmed while JetStream was away")
		}
	case err := <-seen.lost:
		t.Fatalf("lost while JetStream was away: %v", err)
	case <-time.After(within):
		t.Fatalf("not reported unconfirmed after %v without JetStream", within)
	}
	return store
}

// TestAnUnreachableBucketPausesTheLease: while JetStream is away (longer
// than half the TTL, and longer than the TTL, so the key lapses), the
// holder is told its lease is unconfirmed, not lost; once JetStream is
// back its next renewal confirms it, and the key is its own again.
func TestAnUnreachableBucketPausesTheLease(t *testing.T) {
	for _, away := range []time.Duration{node.NodeLeaseTTL * 2 / 3, node.NodeLeaseTTL * 4 / 3} {
		t.Run(away.String(), func(t *testing.T) {
			t.Parallel()
			nc, srv := connectTo(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			l, kv := takeN1(t, nc)
			wa, seen := watch()
			go l.Keep(ctx, wa)
			store := jetStreamAway(t, srv, seen, away)
			time.Sleep(max(0, away-node.NodeLeaseTTL/2))
			if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: store}); err != nil {
				t.Fatal(err)
			}
			select {
			case c := <-seen.confirmed:
				if !c {
					t.Fatal("unconfirmed twice")
				}
			case err := <-seen.lost:
				t.Fatalf("lost once JetStream was back: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("not confirmed once JetStream was back")
			}
			waitHeld(t, kv, l)
		})
	}
}

// TestARenewalAppliedButUnansweredIsNoLoss: a renewal that timed out may
// have been applied, leaving the key at a revision the holder never saw;
// the key still holds the holder's value, so the next renewal goes on
// instead of reporting the lease lost.
func TestARenewalAppliedButUnansweredIsNoLoss(t *testing.T) {
	nc := connect(t)
	ctx := context.Background()
	l, kv := takeN1(t, nc)
	e, err := kv.Get(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "n1", e.Value(), e.Revision()); err != nil { // the renewal whose reply was lost
		t.Fatal(err)
	}
	keepCtx, stop := context.WithCancel(ctx)
	wa, seen := watch()
	lost := seen.lost
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		l.Keep(keepCtx, wa)
	}()
	// Two renewals at least (one every sixth of the TTL).
	deadline := time.After(5 * time.Second)
	for {
		cur, err := kv.Get(ctx, "n1")
		if err != nil {
			t.Fatal(err)
		}
		if cur.Revision() >= e.Revision()+3 {
			break
		}
		select {
		case err := <-lost:
			t.Fatalf("reported lost: %v", err)
		case <-deadline:
			t.Fatalf("not renewed: revision %d, was %d", cur.Revision(), e.Revision())
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop()
	<-kept
	select {
	case err := <-lost:
		t.Errorf("reported lost: %v", err)
	default:
	}
}

// TestARivalEndsAnUnconfirmedLease: while the holder cannot renew, a
// worker of the node that answers discovery (a standby that reached the
// bucket and took the lapsed key) makes the holder's lease lost.
func TestARivalEndsAnUnconfirmedLease(t *testing.T) {
	nc, srv := connectTo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, _ := takeN1(t, nc)
	wa, seen := watch()
	rival := make(chan string, 1)
	wa.Rival = func(context.Context) string {
		select {
		case id := <-rival:
			return id
		default:
			return ""
		}
	}
	go l.Keep(ctx, wa)
	jetStreamAway(t, srv, seen, 5*time.Second)
	rival <- "the-standby"
	select {
	case err := <-seen.lost:
		if !errors.Is(err, node.ErrLeaseLost) || !strings.Contains(err.Error(), "the-standby") {
			t.Errorf("lost with %v, want ErrLeaseLost naming the rival", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a rival did not end the unconfirmed lease")
	}
}

// TestRivalIsAnotherInstanceOfTheNode: discovery finds an instance of the
// node other than the asker, and neither the asker nor another node's.
func TestRivalIsAnotherInstanceOfTheNode(t *testing.T) {
	nc := connect(t)
	ctx := context.Background()
	svc, err := micro.AddService(nc, micro.Config{Name: "memory", Version: "1.0.0", Metadata: map[string]string{"node": "n1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	n := n1()
	n.DiscoveryWait = 100 * time.Millisecond
	if got := n.Rival(ctx, nc, "someone-else"); got != svc.Info().ID {
		t.Errorf("Rival = %q, want the instance %s", got, svc.Info().ID)
	}
	if got := n.Rival(ctx, nc, svc.Info().ID); got != "" {
		t.Errorf("Rival of the instance itself = %q, want none", got)
	}
	n.Name = "n2"
	if got := n.Rival(ctx, nc, "someone-else"); got != "" {
		t.Errorf("Rival for another node = %q, want none", got)
	}
}

// TestGrantsEndHalfATTLAfterTheTake: the key lives a TTL from its last
// write, the take included, so grants end half a TTL after it, however
// late Keep starts (Run starts it after serving and registering, which
// may wait on a JetStream that does not answer), and a Keep that starts
// late with JetStream away is unconfirmed at once. (Found by review.)
func TestGrantsEndHalfATTLAfterTheTake(t *testing.T) {
	nc, srv := connectTo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := time.Now()
	l, _ := takeN1(t, nc)
	after := time.Now()
	if u := l.GrantsUntil(); u.Before(before.Add(node.NodeLeaseTTL/2)) || u.After(after.Add(node.NodeLeaseTTL/2)) {
		t.Errorf("GrantsUntil %v, want half a TTL after the take (%v to %v)", u, before, after)
	}
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // Register's timeout, as in Run
	wa, seen := watch()
	go l.Keep(ctx, wa)
	select {
	case c := <-seen.confirmed:
		if at := time.Since(before); c || at >= node.NodeLeaseTTL {
			t.Errorf("confirmed %v %.2f s after the take, want unconfirmed before the key may lapse", c, at.Seconds())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("never unconfirmed")
	}
	if !time.Now().After(l.GrantsUntil()) {
		t.Error("grants go on past half a TTL without a renewal")
	}
}

// TestReleaseEndsTheGrants: after Release no grant may be made, whatever a
// renewal in flight does.
func TestReleaseEndsTheGrants(t *testing.T) {
	nc := connect(t)
	l, _ := takeN1(t, nc)
	if !time.Now().Before(l.GrantsUntil()) {
		t.Fatal("no grants right after the take")
	}
	l.Release()
	if time.Now().Before(l.GrantsUntil()) {
		t.Error("grants go on after Release")
	}
}

// TestALeaseRetakenAfterAnotherServedIsLost: a holder that takes its
// lapsed key back asks the instance record whether another worker served
// the node meanwhile (its allocations were then declared gone): the
// record holding another's id, or none, is a loss; its own is not.
func TestALeaseRetakenAfterAnotherServedIsLost(t *testing.T) {
	for _, c := range []struct {
		name   string
		record func(ctx context.Context, kv jetstream.KeyValue) error
		lost   bool
	}{
		{"record still its own", func(context.Context, jetstream.KeyValue) error { return nil }, false},
		{"another's record", func(ctx context.Context, kv jetstream.KeyValue) error {
			_, err := kv.Put(ctx, "n1", []byte("the-standby"))
			return err
		}, true},
		{"record removed by another's clean stop", func(ctx context.Context, kv jetstream.KeyValue) error {
			return kv.Delete(ctx, "n1")
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc := connect(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := n1()
			l, leases := takeN1(t, nc)
			if _, release := n.Register(ctx, nc, "the-holder"); release == nil {
				t.Fatal("no record")
			}
			js, _ := jetstream.New(nc)
			records, err := js.KeyValue(ctx, node.InstanceBucket)
			if err != nil {
				t.Fatal(err)
			}
			if err := leases.Delete(ctx, "n1"); err != nil { // as if it lapsed
				t.Fatal(err)
			}
			if err := c.record(ctx, records); err != nil {
				t.Fatal(err)
			}
			wa, seen := watch()
			wa.Retaken = n.Served
			go l.Keep(ctx, wa)
			if !c.lost {
				waitHeld(t, leases, l)
				select {
				case err := <-seen.lost:
					t.Errorf("lost with its own record: %v", err)
				case <-time.After(time.Second):
				}
				return
			}
			wantLost(t, seen, "taken back after another served")
			if time.Now().Before(l.GrantsUntil()) {
				t.Error("grants go on after the loss")
			}
		})
	}
}

// TestServedTellsAnotherFromUnknown: another instance's record (or none)
// is ErrServedMeanwhile; a record that cannot be read is not taken for
// "nobody served" (found by review), nor for a loss.
func TestServedTellsAnotherFromUnknown(t *testing.T) {
	nc := connect(t)
	ctx := context.Background()
	n := n1()
	n.Register(ctx, nc, "the-holder")
	if err := n.Served(ctx); err != nil {
		t.Fatalf("its own record: %v", err)
	}
	js, _ := jetstream.New(nc)
	records, err := js.KeyValue(ctx, node.InstanceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := records.Put(ctx, "n1", []byte("the-standby")); err != nil {
		t.Fatal(err)
	}
	if err := n.Served(ctx); !errors.Is(err, node.ErrServedMeanwhile) {
		t.Errorf("another's record: %v, want ErrServedMeanwhile", err)
	}
	spent, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	<-spent.Done()
	if err := n.Served(spent); err == nil || errors.Is(err, node.ErrServedMeanwhile) {
		t.Errorf("an unreadable record: %v, want an error that is not ErrServedMeanwhile", err)
	}
}

// TestAStandbyWaitsThroughJetStreamAway: a standby waiting for the node
// does not give up while JetStream is away a moment (found by review),
// and takes the node once it is back and free.
func TestAStandbyWaitsThroughJetStreamAway(t *testing.T) {
	nc, srv := connectTo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held, _ := takeN1(t, nc)
	standby := make(chan error, 1)
	go func() {
		l, err := (&node.Node{Name: "n1", Standby: true, Service: "memory", JetStream: true, Log: slog.New(slog.DiscardHandler)}).Take(ctx, nc)
		if err == nil && l == nil {
			err = errors.New("no lease")
		}
		standby <- err
	}()
	time.Sleep(300 * time.Millisecond) // it waits on the held key
	store := srv.JetStreamConfig().StoreDir
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	select {
	case err := <-standby:
		t.Fatalf("the standby stopped waiting while JetStream was away: %v", err)
	default:
	}
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: store}); err != nil {
		t.Fatal(err)
	}
	held.Release()
	select {
	case err := <-standby:
		if err != nil {
			t.Errorf("the standby: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the standby did not take the node once it was free")
	}
}

// TestALeaseOutlivesItsBucket: when the lease bucket is gone (a server
// back with an empty store, the bucket deleted), the holder makes it again
// after a while unconfirmed and takes its key back, instead of staying
// unconfirmed for good (found by review).
func TestALeaseOutlivesItsBucket(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, _ := takeN1(t, nc)
	wa, seen := watch()
	go l.Keep(ctx, wa)
	js, _ := jetstream.New(nc)
	if err := js.DeleteKeyValue(ctx, node.NodeLeaseBucket); err != nil {
		t.Fatal(err)
	}
	for _, want := range []bool{false, true} {
		select {
		case c := <-seen.confirmed:
			if c != want {
				t.Fatalf("confirmed %v, want %v", c, want)
			}
		case err := <-seen.lost:
			t.Fatalf("lost: %v", err)
		case <-time.After(15 * time.Second):
			t.Fatalf("not reported confirmed %v", want)
		}
	}
	kv, err := js.KeyValue(ctx, node.NodeLeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	waitHeld(t, kv, l)
}
