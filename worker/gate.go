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

	mu      sync.Mutex
	changes chan struct{} // closed at the next change; nil until asked for
}

// Changed returns a channel closed at the gate's next change: it opened
// again (a renewal after it closed), or closed for good (the lease given
// up or lost). A transfer refused by a closed gate waits for it, then asks
// again.
func (g *leaseGate) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.changes == nil {
		g.changes = make(chan struct{})
	}
	return g.changes
}

// changed tells those waiting in Changed that the gate changed.
func (g *leaseGate) changed() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.changes != nil {
		close(g.changes)
		g.changes = nil
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

// transferDoorRetry is how often a transfer refused by the closed gate asks
// again when no change was signalled (0: the transfer package's default, a
// second). The tests lengthen it, so only the signal lets a transfer go on.
var transferDoorRetry time.Duration
