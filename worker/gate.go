package worker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/node"
)

// leaseGate is the devices' gate (ledger.Gate): open while the worker may
// grant memory, that is, with no lease (no JetStream), or before the
// lease's GrantsUntil. Every grant reads it; the lease's renewals move it
// without a lock, so no device's lock (held for seconds by a long offload,
// say) ever holds the renewals back.
type leaseGate struct {
	node  string
	lease atomic.Pointer[node.Lease]

	mu     sync.Mutex
	opened chan struct{} // closed at the next opening; nil until asked for
}

// Opened returns a channel closed the next time the gate opens again (a
// renewal after the gate closed): what a transfer refused by a closed gate
// waits for.
func (g *leaseGate) Opened() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened == nil {
		g.opened = make(chan struct{})
	}
	return g.opened
}

// open tells those waiting in Opened that the gate opened.
func (g *leaseGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened != nil {
		close(g.opened)
		g.opened = nil
	}
}

// Closed reads the clock itself, whatever now the ledger passes: a grant
// made late in a long operation (the third model of a restore, seconds of
// copying after the request began) must see the lease as it is then.
func (g *leaseGate) Closed(time.Time) error {
	l := g.lease.Load()
	if l == nil {
		return nil
	}
	now := time.Now()
	if now.Before(l.GrantsUntil()) {
		return nil
	}
	written := l.Written()
	if written.IsZero() {
		return fmt.Errorf("the worker of node %s gave up or lost the node's lease: %w", g.node, device.ErrUnavailable)
	}
	return fmt.Errorf("the worker of node %s cannot confirm it still serves the node (its lease in JetStream was last renewed %.1f s ago)",
		g.node, now.Sub(written).Seconds())
}
