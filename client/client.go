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

// Conn is the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }
