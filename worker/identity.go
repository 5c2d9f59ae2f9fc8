package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
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

func (w *Worker) lifecycle(pub *events.Publisher, typ, instance string) {
	host, _ := os.Hostname()
	err := pub.PublishLifecycle(typ, events.Lifecycle{
		Node: w.cfg.Node, Instance: instance, Host: host, Standby: w.cfg.Standby,
		Devices: w.DeviceIDs(), At: time.Now().UTC(),
	})
	if err != nil {
		w.log.Warn("lifecycle event", "type", typ, "err", err)
	}
}
