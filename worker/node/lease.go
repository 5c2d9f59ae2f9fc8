package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/subjects"
)

// One writer per node. A device's ledger lives in one process: two workers
// answering for one node would split it (a quota passed twice over, a free
// that finds nothing). So the worker serving a node holds the node's key in
// a JetStream key-value bucket whose entries live NodeLeaseTTL, renewing it
// with a revision check; a standby waits, subscribed to nothing, until the
// key is gone (deleted at a clean stop, or expired when the active died),
// and creates it: creation is atomic, so two workers started at once
// cannot both win. A worker that cannot reach the bucket for a while (its
// server restarting, JetStream electing a leader) grants no memory until
// it renews again (Watch), and stops only when it finds another worker
// holding the key: stopping would give up every allocation it holds for
// its clients.

// NodeLeaseBucket is the key-value bucket of node leases.
const NodeLeaseBucket = subjects.NodeLeaseBucket

// Lease timing: a lease lapses NodeLeaseTTL after its last renewal; it is
// renewed every sixth of that, and a standby looks for a free one every
// leasePoll.
const (
	NodeLeaseTTL = 3 * time.Second
	leasePoll    = 250 * time.Millisecond
	// bucketSetup bounds the tries to make the lease bucket.
	bucketSetup = 30 * time.Second
	// bucketGone is how long a lease stays unconfirmed before Keep also
	// makes its bucket again, each try: an outage that long may have been
	// a server coming back with an empty store. (Sooner, its JetStream API
	// calls would only add to an outage.)
	bucketGone = 2 * NodeLeaseTTL
)

// ErrLeaseLost is returned by Run when another worker took the node's
// lease: this one stopped serving.
var ErrLeaseLost = errors.New("the node's lease was lost")

// Lease is a held lease on the node. Keep renews it on its goroutine
// while Release gives it up from the stop: mu guards rev and released.
type Lease struct {
	kv jetstream.KeyValue
	// bucket makes the lease bucket again (a server back with an empty
	// store): Keep asks after bucketGone unconfirmed.
	bucket func(context.Context) (jetstream.KeyValue, error)
	node   string
	value  []byte

	mu       sync.Mutex
	rev      uint64
	released bool

	// renewed is when the key was last written for this lease (taken or
	// renewed), read just before the write (with the clock's monotonic
	// reading): the key lives NodeLeaseTTL from a moment no earlier. nil
	// once released or lost.
	renewed atomic.Pointer[time.Time]
}

// GrantsUntil is until when the worker holding l may grant memory: half a
// NodeLeaseTTL after the key was last written for it, well before a
// standby could take the key. It is read by every grant (the devices'
// gate) and moved by Keep without a lock; after Release or a loss it is in
// the past.
func (l *Lease) GrantsUntil() time.Time {
	return l.Written().Add(NodeLeaseTTL / 2)
}

// Written is when the key was last written for l: zero once it was
// released or lost.
func (l *Lease) Written() time.Time {
	if t := l.renewed.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Take takes the node's lease: at once, or, as a standby, once the node is
// free (ctx bounds the wait). A worker that is no standby fails with
// ErrNodeTaken when the lease is held by a live worker (it waits one TTL
// for a dead one's to lapse).
func (n *Node) Take(ctx context.Context, nc *nats.Conn) (*Lease, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("the node lease: %w", err)
	}
	// JetStream that answers but cannot make the bucket yet (a cluster
	// just formed, a leader being elected) is asked again for a while.
	setup, cancel := context.WithTimeout(ctx, bucketSetup)
	defer cancel()
	bucket := func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: NodeLeaseBucket, Description: "which memworker instance serves each node (leases)",
			History: 1, TTL: NodeLeaseTTL, Replicas: min(3, max(1, len(nc.Servers()))),
		})
	}
	var kv jetstream.KeyValue
	for {
		kv, err = bucket(setup)
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, nil
		}
		if err == nil {
			break
		}
		if apiErr := (*jetstream.APIError)(nil); errors.As(err, &apiErr) && apiErr.Code < 500 {
			return nil, fmt.Errorf("the node lease bucket: %w", err) // no wait mends it (a limit, a permission)
		}
		select {
		case <-setup.Done():
			return nil, fmt.Errorf("the node lease bucket: %w", err)
		case <-time.After(leasePoll):
		}
	}
	l := &Lease{kv: kv, bucket: bucket, node: n.Name, value: []byte(nuid.Next())}
	waiting := false
	// A worker that is no standby waits one TTL too: a lease held by a
	// worker that just died (a restart after a crash) lapses by then, while
	// a live one is renewed and stays.
	refuseAt := time.Now().Add(NodeLeaseTTL + leasePoll)
	for {
		at := time.Now()
		rev, err := kv.Create(ctx, l.node, l.value)
		if err == nil {
			l.rev = rev
			l.renewed.Store(&at)
			if waiting {
				n.Log.Info("the node is free: this worker takes it over", "node", l.node)
			}
			return l, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			// JetStream cannot answer now (an election, a server away): a
			// standby goes on waiting; a worker starting tries for as long
			// as it may for the bucket.
			if !n.Standby && setup.Err() != nil {
				return nil, fmt.Errorf("taking the node's lease: %w", err)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(leasePoll):
			}
			continue
		}
		if !n.Standby && time.Now().After(refuseAt) {
			return nil, fmt.Errorf("%w: node %s is served by another worker (its lease is held); choose another --node, or start with --standby to take over when it stops",
				ErrNodeTaken, l.node)
		}
		if !waiting && n.Standby {
			n.Log.Info("standing by: another worker serves the node", "node", l.node)
		} else if !waiting {
			n.Log.Info("the node's lease is held: waiting for it to lapse (its worker may have just died)", "node", l.node, "for", NodeLeaseTTL)
		}
		waiting = true
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leasePoll):
		}
	}
}

// Watch is what Keep tells the worker of its lease.
type Watch struct {
	// Lost: another worker holds the node's lease. This one must stop
	// serving.
	Lost func(error)
	// Unconfirmed: no renewal succeeded for half a NodeLeaseTTL. The bucket
	// cannot be reached (a server restarting, JetStream electing a leader)
	// or does not answer in time. A standby can take the key only a whole
	// TTL after the last renewal, so the worker stops granting memory well
	// before that. It keeps what it holds, serves the rest, and Keep goes
	// on trying.
	Unconfirmed func(error)
	// Confirmed: the gate opened again: after Unconfirmed (or after the
	// gate closed while a renewal ran, with no Unconfirmed), a renewal
	// succeeded, at this lease's revision or by taking the lapsed key again
	// (creation is atomic). Either way no other worker holds the node now.
	Confirmed func()
	// Rival, when set, is asked after each renewal that fails while the
	// lease is unconfirmed for another worker serving the node (Node.Rival):
	// one that reaches the bucket when this one cannot (a standby on
	// another server) takes the lapsed key and serves. A rival's id is
	// reported to Lost, so the two share the node's subjects as briefly as
	// can be.
	Rival func(context.Context) string
	// Retaken, when set, is asked after the lease was taken back because it
	// had lapsed: whether another worker served the node meanwhile
	// (Node.Served). ErrServedMeanwhile is reported to Lost; any other
	// error leaves it unknown, and the lease unconfirmed until a later
	// renewal asks again and learns.
	Retaken func(context.Context) error
}

// errTaken is a renewal that found another worker's value in the key.
var errTaken = errors.New("another worker holds the node's lease")

// Keep renews the lease until ctx is done, or until it finds another
// worker holding it (w.Lost). It tries at once, then every sixth of the
// TTL, each try waiting at most as long. When GrantsUntil passes without a
// renewal (half a TTL since the last write) it calls w.Unconfirmed, and at
// the next renewal that succeeds (or the first, when it started with
// GrantsUntil passed) w.Confirmed. The callbacks run on Keep's
// goroutine and must not block: the renewals wait for them.
func (l *Lease) Keep(ctx context.Context, w Watch) {
	t := time.NewTicker(NodeLeaseTTL / 6)
	defer t.Stop()
	unconfirmed := false
	var unconfirmedAt time.Time
	unchecked := false // taken back, and not yet known whether another served meanwhile
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		l.mu.Lock()
		prev := l.renewed.Load()
		if l.released || prev == nil { // released, or Release waits for the lock
			l.mu.Unlock()
			return
		}
		rctx, cancel := context.WithTimeout(ctx, NodeLeaseTTL/6)
		if unconfirmed && time.Since(unconfirmedAt) >= bucketGone {
			if kv, err := l.bucket(rctx); err == nil {
				l.kv = kv
			}
		}
		written, retaken, err := l.renew(rctx)
		unchecked = unchecked || (retaken && w.Retaken != nil)
		if err == nil && unchecked {
			switch serr := w.Retaken(rctx); {
			case errors.Is(serr, ErrServedMeanwhile):
				err = fmt.Errorf("%w: %v", errTaken, serr)
			case serr != nil:
				err = serr // not known yet: the gate stays as it is
			default:
				unchecked = false
			}
		}
		closed, releasing := false, false
		if err == nil {
			// Closed before this renewal was stored (Keep started late, a
			// renewal stalled, or this one ran past GrantsUntil): the
			// renewal opens it again, and says so to whoever found it
			// closed. A Release that began meanwhile (it clears the time
			// before it waits for the lock) wins: no grant, no Confirmed,
			// Keep ends.
			closed = !time.Now().Before(prev.Add(NodeLeaseTTL / 2))
			releasing = !l.renewed.CompareAndSwap(prev, &written)
		}
		cancel()
		l.mu.Unlock()
		if releasing {
			return
		}
		switch {
		case err == nil:
			if unconfirmed || closed {
				unconfirmed = false
				w.Confirmed()
			}
		case ctx.Err() != nil:
			return
		case errors.Is(err, errTaken):
			l.renewed.Store(nil)
			w.Lost(fmt.Errorf("%w: %v", ErrLeaseLost, err))
			return
		case !unconfirmed && !time.Now().Before(l.GrantsUntil()):
			unconfirmed, unconfirmedAt = true, time.Now()
			w.Unconfirmed(fmt.Errorf("the node's lease was last renewed %s ago: %v",
				time.Since(l.Written()).Round(time.Millisecond), err))
		case unconfirmed && w.Rival != nil:
			if id := w.Rival(ctx); id != "" {
				l.renewed.Store(nil)
				w.Lost(fmt.Errorf("%w: instance %s serves the node (%v)", ErrLeaseLost, id, err))
				return
			}
		}
	}
}

// renew updates the key at the revision last seen. A renewal that timed
// out may still have been applied: the key then holds this lease's own
// value at a later revision, which is not a loss, so the key is read and,
// where it is still this lease's, renewed at its revision. A key that
// lapsed (no renewal for a whole TTL) is taken again unless another
// worker took it first. It fails with errTaken when another worker holds
// the key; any other error leaves that unknown. It returns the time just
// before the write (the key lives a TTL from no earlier), and whether it
// took, or may have taken, a lapsed key again. l.mu is held.
func (l *Lease) renew(ctx context.Context) (at time.Time, retaken bool, err error) {
	at = time.Now()
	rev, err := l.kv.Update(ctx, l.node, l.value, l.rev)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := l.kv.Get(ctx, l.node)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			rev, err = l.kv.Create(ctx, l.node, l.value)
			if errors.Is(err, jetstream.ErrKeyExists) {
				return at, false, fmt.Errorf("%w: it lapsed and another took it", errTaken)
			}
			retaken = true // also when the answer is lost: the creation may stand
			if err != nil {
				return at, true, err
			}
		case gerr != nil:
			return at, false, gerr // not known: tried again at the next tick
		case !bytes.Equal(e.Value(), l.value):
			return at, false, errTaken
		default:
			rev, err = l.kv.Update(ctx, l.node, l.value, e.Revision())
		}
	}
	if err != nil {
		return at, false, err
	}
	l.rev = rev
	return at, retaken, nil
}

// Release gives the lease up, so a standby takes over at once.
func (l *Lease) Release() {
	l.renewed.Store(nil) // no grant from now on, whatever a renewal in flight does
	l.mu.Lock()
	defer l.mu.Unlock()
	l.renewed.Store(nil)
	l.released = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.kv.Delete(ctx, l.node, jetstream.LastRevision(l.rev))
}
