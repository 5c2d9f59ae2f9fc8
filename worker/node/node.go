// Package node keeps a node to one worker: the check at start-up (micro
// discovery), the node's lease (one writer per node), the record of the
// instance serving it, and its lifecycle events.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/memworker/memworker/events"
)

// Node is one host's worker as the node's guard needs it.
type Node struct {
	Name    string
	Standby bool
	// Service is the micro service name the workers register.
	Service string
	// DiscoveryWait is how long the start-up check listens.
	DiscoveryWait time.Duration
	// JetStream: the node's record is kept in a key-value bucket.
	JetStream bool
	Log       *slog.Logger

	record atomic.Pointer[record] // what Register recorded
}

// ErrNodeTaken is returned when another worker already serves the node
// and this one is not a standby.
var ErrNodeTaken = errors.New("node is already served")

// Check asks micro discovery for the workers of this node: two hosts with
// the same --node would silently share subjects, so unless this worker is
// a standby it refuses to start.
func (n *Node) Check(ctx context.Context, nc *nats.Conn) error {
	info, err := n.serving(ctx, nc, "")
	switch {
	case err != nil:
		return fmt.Errorf("discovering workers: %w", err)
	case info == nil:
		return nil
	case n.Standby:
		n.Log.Info("joining as a standby", "node", n.Name, "active_instance", info.ID, "active_host", info.Metadata["host"])
		return nil
	}
	return fmt.Errorf("%w: node %s is served by instance %s on host %q; choose another --node, or start with --standby to join it",
		ErrNodeTaken, n.Name, info.ID, info.Metadata["host"])
}

// Rival asks micro discovery for an instance other than self serving the
// node, and returns its id ("" when none answered): a worker that cannot
// renew its lease learns so that a standby took the node over.
func (n *Node) Rival(ctx context.Context, nc *nats.Conn, self string) string {
	if info, err := n.serving(ctx, nc, self); err == nil && info != nil {
		return info.ID
	}
	return ""
}

// serving is the first instance other than self that answers micro
// discovery for the node, or nil.
func (n *Node) serving(ctx context.Context, nc *nats.Conn, self string) (*micro.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, n.DiscoveryWait+time.Second)
	defer cancel()
	subject, err := micro.ControlSubject(micro.InfoVerb, n.Service, "")
	if err != nil {
		return nil, err
	}
	msgs, err := natsext.RequestMany(ctx, nc, subject, nil, natsext.RequestManyStall(n.DiscoveryWait))
	if err != nil {
		return nil, err
	}
	for msg, err := range msgs {
		if err != nil {
			break // no responders or the stall: nobody else
		}
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) != nil || info.Metadata["node"] != n.Name || info.ID == self {
			continue
		}
		return &info, nil
	}
	return nil, nil
}

// Announce publishes a lifecycle event of type typ about instance (and the
// instance gone before it, in a started event).
func (n *Node) Announce(pub *events.Publisher, typ, instance, gone string, devices []string) {
	host, _ := os.Hostname()
	err := pub.PublishLifecycle(typ, events.Lifecycle{
		Node: n.Name, Instance: instance, Host: host, Standby: n.Standby,
		Devices: devices, At: time.Now().UTC(), GoneInstance: gone,
	})
	if err != nil {
		n.Log.Warn("lifecycle event", "type", typ, "err", err)
	}
}

// InstanceBucket is the JetStream key-value bucket that keeps, per node,
// the instance serving it, so the next worker of the node can say that one
// which vanished without a stopped event is gone.
const InstanceBucket = "memworker_instances"

// Register records instance as the one serving the node and
// returns the instance recorded before, which stopped without saying so
// (a clean stop removes its record), and a function that removes the
// record at a clean stop. Without JetStream it records nothing. Once it
// recorded, n.Served tells whether another instance served since.
func (n *Node) Register(ctx context.Context, nc *nats.Conn, instance string) (gone string, release func()) {
	release = func() {}
	if !n.JetStream {
		return "", release
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return "", release
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: InstanceBucket, Description: "the memworker instance serving each node", History: 1,
	})
	if err != nil {
		n.Log.Debug("no instance record", "err", err)
		return "", release
	}
	if e, err := kv.Get(ctx, n.Name); err == nil && string(e.Value()) != instance {
		gone = string(e.Value())
		n.Log.Warn("the node's previous instance stopped without a stop event; its allocations are gone", "gone_instance", gone)
	}
	rev, err := kv.Put(ctx, n.Name, []byte(instance))
	if err != nil {
		return gone, release
	}
	n.record.Store(&record{kv: kv, instance: instance})
	return gone, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = kv.Delete(ctx, n.Name, jetstream.LastRevision(rev))
	}
}

// record is the instance record Register made.
type record struct {
	kv       jetstream.KeyValue
	instance string
}

// Served reports whether another instance served the node since this one
// registered: the record holds another's id, or none (another registered
// and stopped cleanly, removing it). A worker that took its lapsed lease
// back asks, because its allocations were declared gone by the one that
// served meanwhile. It reports nothing when nothing was recorded.
// It fails with ErrServedMeanwhile when another did, and with the read's
// error when the record cannot be read (not known yet: asked again).
func (n *Node) Served(ctx context.Context) error {
	r := n.record.Load()
	if r == nil {
		return nil
	}
	e, err := r.kv.Get(ctx, n.Name)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return fmt.Errorf("%w and stopped (the instance record is gone)", ErrServedMeanwhile)
	case err != nil:
		return fmt.Errorf("reading the instance record: %w", err)
	case string(e.Value()) != r.instance:
		return fmt.Errorf("%w: instance %s", ErrServedMeanwhile, e.Value())
	}
	return nil
}

// ErrServedMeanwhile: another instance served the node while this one's
// lease had lapsed.
var ErrServedMeanwhile = errors.New("another instance served the node meanwhile")
