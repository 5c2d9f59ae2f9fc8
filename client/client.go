// Package client is a small Go client for memworker: typed request-reply to
// one device, and fleet requests gathered from every node with
// request-many.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/memworker/memworker/subjects"
)

// Client sends memworker requests on a NATS connection.
type Client struct {
	nc *nats.Conn
	// Timeout bounds a request when its context has no deadline.
	Timeout time.Duration
}

// New returns a client with a 10 s default timeout.
func New(nc *nats.Conn) *Client { return &Client{nc: nc, Timeout: 10 * time.Second} }

// ErrNoWorker means nothing serves the device: no worker subscribes to its
// subject.
var ErrNoWorker = errors.New("no worker serves this device")

// Do sends op with data to deviceID and decodes a successful reply's data
// into out (which may be nil). A failed reply returns its *subjects.Error.
// Every call gets a fresh request_id (a NUID: unique without coordination,
// and far cheaper than a random UUID); use DoID to retry with the same one.
func (c *Client) Do(ctx context.Context, op subjects.Op, deviceID string, data, out any) (*subjects.Reply, error) {
	return c.DoID(ctx, nuid.Next(), op, deviceID, data, out)
}

// DoID is Do with a caller-chosen request_id, so a retry after a lost reply
// is answered from the worker's replay cache instead of acting twice.
func (c *Client) DoID(ctx context.Context, requestID string, op subjects.Op, deviceID string, data, out any) (*subjects.Reply, error) {
	body, err := subjects.NewRequest(requestID, op, data)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subjects.Request(op, deviceID), body)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("%w: %s", ErrNoWorker, deviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, deviceID, err)
	}
	return subjects.DecodeReply(msg.Data, out)
}

// bound gives ctx the client's timeout unless it has a deadline already.
func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.Timeout)
}

// FleetResult is what a fleet request gathered.
type FleetResult struct {
	// Nodes holds one reply per node that answered.
	Nodes []subjects.FleetReply
	// Failed holds the nodes whose whole reply was an error.
	Failed []error
}

// Fleet sends op to memory.<op>.all and gathers one reply per node until
// no reply came for stall (or ctx ends). Every node answers once for all its
// devices.
func (c *Client) Fleet(ctx context.Context, op subjects.Op, data any, stall time.Duration) (*FleetResult, error) {
	return c.FleetExpect(ctx, op, data, stall, 0)
}

// FleetExpect is Fleet that also stops as soon as expect nodes answered
// (0: wait for the stall), for callers that know the fleet's size.
func (c *Client) FleetExpect(ctx context.Context, op subjects.Op, data any, stall time.Duration, expect int) (*FleetResult, error) {
	if !op.Fleet() {
		return nil, fmt.Errorf("%s is not a fleet operation", op)
	}
	body, err := subjects.NewRequest(nuid.Next(), op, data)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	opts := []natsext.RequestManyOpt{natsext.RequestManyStall(stall)}
	if expect > 0 {
		opts = append(opts, natsext.RequestManyMaxMessages(expect))
	}
	msgs, err := natsext.RequestMany(ctx, c.nc, subjects.FleetRequest(op), body, opts...)
	if err != nil {
		return nil, err
	}
	res := &FleetResult{}
	for msg, err := range msgs {
		if errors.Is(err, nats.ErrNoResponders) {
			return res, fmt.Errorf("%w: no node answers %s", ErrNoWorker, subjects.FleetRequest(op))
		}
		if err != nil {
			return res, err
		}
		var fr subjects.FleetReply
		if _, err := subjects.DecodeReply(msg.Data, &fr); err != nil {
			res.Failed = append(res.Failed, err)
			continue
		}
		res.Nodes = append(res.Nodes, fr)
	}
	return res, nil
}

// Conn is the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }
