package client

import (
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
)

// Reconnect backoff of a resilient connection: from the first delay,
// doubling up to the last, with up to a quarter of jitter.
const (
	firstReconnectDelay = 250 * time.Millisecond
	lastReconnectDelay  = 10 * time.Second
)

// ConnectionEvent is what a resilient connection tells: lost (with the
// error, when there was one) or back (with the server's URL).
type ConnectionEvent struct {
	Lost bool
	URL  string
	Err  error
}

// Resilient returns the options of a long-lived connection (a worker, a
// watch, a service): it reconnects forever with a backoff, and tells
// notify once when the connection is lost and once when it is back, not
// on every attempt. nats.go's default gives up after 60 attempts, about
// two minutes, silently.
func Resilient(notify func(ConnectionEvent)) []nats.Option {
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // closed on purpose, not lost
			}
			notify(ConnectionEvent{Lost: true, Err: err})
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			notify(ConnectionEvent{URL: nc.ConnectedUrlRedacted()})
		}),
	}
}

// reconnectDelay is the wait before reconnect attempt n (from 1).
func reconnectDelay(attempts int) time.Duration {
	d := lastReconnectDelay
	if attempts < 16 {
		d = min(lastReconnectDelay, firstReconnectDelay<<max(attempts-1, 0))
	}
	return d + rand.N(d/4+1)
}
