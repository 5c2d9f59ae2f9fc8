package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/memworker/memworker/events"
)

// ErrNodeTaken is returned by Run when another worker already serves the
// node and this one is not a standby.
var ErrNodeTaken = errors.New("node is already served")

// checkNode asks micro discovery for the workers of this node: two hosts
// with the same --node would silently share subjects, so unless this worker
// is a standby it refuses to start.
func (w *Worker) checkNode(ctx context.Context, nc *nats.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.DiscoveryWait+time.Second)
	defer cancel()
	subject, err := micro.ControlSubject(micro.InfoVerb, ServiceName, "")
	if err != nil {
		return err
	}
	msgs, err := natsext.RequestMany(ctx, nc, subject, nil, natsext.RequestManyStall(w.cfg.DiscoveryWait))
	if err != nil {
		return fmt.Errorf("discovering workers: %w", err)
	}
	for msg, err := range msgs {
		if err != nil {
			break // no responders or the stall: nobody else
		}
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) != nil || info.Metadata["node"] != w.cfg.Node {
			continue
		}
		if w.cfg.Standby {
			w.log.Info("joining as a standby", "node", w.cfg.Node, "active_instance", info.ID, "active_host", info.Metadata["host"])
			return nil
		}
		return fmt.Errorf("%w: node %s is served by instance %s on host %q; choose another --node, or start with --standby to join it",
			ErrNodeTaken, w.cfg.Node, info.ID, info.Metadata["host"])
	}
	return nil
}

func (w *Worker) lifecycle(pub *events.Publisher, typ, instance, gone string) {
	host, _ := os.Hostname()
	err := pub.PublishLifecycle(typ, events.Lifecycle{
		Node: w.cfg.Node, Instance: instance, Host: host, Standby: w.cfg.Standby,
		Devices: w.DeviceIDs(), At: time.Now().UTC(), GoneInstance: gone,
	})
	if err != nil {
		w.log.Warn("lifecycle event", "type", typ, "err", err)
	}
}

// InstanceBucket is the JetStream key-value bucket that keeps, per node,
// the instance serving it, so the next worker of the node can say that one
// which vanished without a stopped event is gone.
const InstanceBucket = "memworker_instances"

// registerInstance records instance as the one serving the node and
// returns the instance recorded before, which stopped without saying so
// (a clean stop removes its record), and a function that removes the
// record at a clean stop. Without JetStream it records nothing.
func (w *Worker) registerInstance(ctx context.Context, nc *nats.Conn, instance string) (gone string, release func()) {
	release = func() {}
	if !w.cfg.EventsJetStream {
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
		w.log.Debug("no instance record", "err", err)
		return "", release
	}
	if e, err := kv.Get(ctx, w.cfg.Node); err == nil && string(e.Value()) != instance {
		gone = string(e.Value())
		w.log.Warn("the node's previous instance stopped without a stop event; its allocations are gone", "gone_instance", gone)
	}
	rev, err := kv.Put(ctx, w.cfg.Node, []byte(instance))
	if err != nil {
		return gone, release
	}
	return gone, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = kv.Delete(ctx, w.cfg.Node, jetstream.LastRevision(rev))
	}
}
