package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/subjects"
)

// FleetResult is what a fleet request gathered.
type FleetResult struct {
	// Nodes holds one reply per node that answered.
	Nodes []subjects.FleetReply
	// Failed holds the nodes whose whole reply was an error.
	Failed []error
}

// Fleet sends op to memory.<op>.all and gathers one reply per node. Every
// node answers once for all its devices. It stops as soon as every node
// holding a lease (subjects.NodeLeaseBucket, read while the replies come)
// has answered, else when no reply came for stall (0: no stall), or when
// ctx ends. A fleet without JetStream, or a client not allowed to read
// the bucket, waits out the stall as request-many does.
func (c *Client) Fleet(ctx context.Context, op subjects.Op, data any, stall time.Duration) (*FleetResult, error) {
	return c.gather(ctx, op, data, stall, 0, true)
}

// FleetExpect is Fleet that stops as soon as expect nodes answered (0:
// when no reply came for stall), for callers that know the fleet's size;
// it does not read the lease bucket.
func (c *Client) FleetExpect(ctx context.Context, op subjects.Op, data any, stall time.Duration, expect int) (*FleetResult, error) {
	return c.gather(ctx, op, data, stall, expect, false)
}

func (c *Client) gather(ctx context.Context, op subjects.Op, data any, stall time.Duration, expect int, leased bool) (*FleetResult, error) {
	if !op.Fleet() {
		return nil, fmt.Errorf("%s is not a fleet operation", op)
	}
	body, err := subjects.NewRequest(nuid.Next(), op, data)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	// The pump and the bucket's reader end with the gathering.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := c.nc.PublishRequest(subjects.FleetRequest(op), inbox, body); err != nil {
		return nil, err
	}
	// The subscription's own buffer holds what arrives; the pump hands
	// it over one by one so the wait below can also watch the lease
	// bucket's answer and the stall.
	replies := make(chan *nats.Msg)
	failed := make(chan error, 1)
	go func() {
		for {
			m, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				failed <- err
				return
			}
			select {
			case replies <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	var nodes chan []string
	if leased {
		nodes = make(chan []string, 1)
		go func() { nodes <- c.leasedNodes(ctx) }()
	}

	res := &FleetResult{}
	answered := map[string]bool{}
	var pending map[string]bool // leased nodes yet to answer; nil until known
	var quiet <-chan time.Time  // the stall, from the first reply on
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if expect > 0 && len(res.Nodes)+len(res.Failed) >= expect || pending != nil && len(pending) == 0 && len(answered) > 0 {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, nil
		case <-quiet:
			return res, nil
		case list := <-nodes:
			nodes = nil
			// An empty bucket (left over, every lease lapsed) names no
			// node: it cannot end the gather at the first reply.
			if len(list) > 0 {
				pending = map[string]bool{}
				for _, n := range list {
					if !answered[n] {
						pending[n] = true
					}
				}
			}
		case err := <-failed:
			if errors.Is(err, nats.ErrNoResponders) {
				return res, fmt.Errorf("%w: no node answers %s", ErrNoWorker, subjects.FleetRequest(op))
			}
			if ctx.Err() != nil {
				return res, nil
			}
			return res, err
		case m := <-replies:
			switch {
			case stall <= 0: // no stall: until ctx ends (or every node answered)
			case timer == nil:
				timer = time.NewTimer(stall)
				quiet = timer.C
			default:
				timer.Reset(stall)
			}
			var fr subjects.FleetReply
			if _, err := subjects.DecodeReply(m.Data, &fr); err != nil {
				res.Failed = append(res.Failed, err)
				continue
			}
			res.Nodes = append(res.Nodes, fr)
			answered[fr.Node] = true
			delete(pending, fr.Node)
		}
	}
}

// leasedNodes names the nodes holding a lease in the node lease bucket,
// or nil when it cannot be read (no JetStream, no bucket, no permission)
// before ctx ends.
func (c *Client) leasedNodes(ctx context.Context) []string {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil
	}
	kv, err := js.KeyValue(ctx, subjects.NodeLeaseBucket)
	if err != nil {
		return nil
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil
	}
	defer keys.Stop()
	list := []string{}
	for k := range keys.Keys() {
		list = append(list, k)
	}
	if ctx.Err() != nil {
		return nil
	}
	return list
}
