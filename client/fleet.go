package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// Graced: the gather ended on the grace, not the stall (every leased
	// node had answered). A node without a lease answering later was
	// left out; ask again with FleetExpect when that matters.
	Graced bool
}

// Fleet sends op to memory.<op>.all and gathers one reply per node. Every
// node answers once for all its devices. It ends when no reply came for
// stall (0: no stall), or when ctx ends (its cancellation is returned; its
// deadline is a gather's usual end).
//
// It also reads the node lease bucket (subjects.NodeLeaseBucket) while the
// replies come. Once every node holding a lease answered, and no node
// without one did, the stall shortens to a grace as long as the gather
// took so far (10 ms at least, stall at most), for nodes that hold no
// lease: a worker whose events are not kept in JetStream (--no-event-stream)
// or whose lease lapsed. Such a node that answers after the grace is left
// out; callers that must not miss one (an allocation id that no node
// seems to hold) ask again with FleetExpect. A fleet without JetStream, a
// client that may not read the bucket, or an empty bucket waits out the
// stall, as request-many does.
func (c *Client) Fleet(ctx context.Context, op subjects.Op, data any, stall time.Duration) (*FleetResult, error) {
	return c.gather(ctx, op, data, stall, 0, true)
}

// FleetExpect is Fleet without the lease bucket: it stops as soon as
// expect nodes answered, else (and with expect 0) when no reply came for
// stall, or when ctx ends.
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
	sent := time.Now()
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

	g := newGathering(stall, sent)
	defer g.stop()
	for {
		if expect > 0 && len(g.res.Nodes)+len(g.res.Failed) >= expect {
			return g.res, nil
		}
		select {
		case <-ctx.Done():
			return g.res, gatherEnd(ctx)
		case <-g.quiet:
			g.res.Graced = g.wait != g.stall
			return g.res, nil
		case list := <-nodes:
			nodes = nil
			g.leases(list)
		case err := <-failed:
			if errors.Is(err, nats.ErrNoResponders) {
				return g.res, fmt.Errorf("%w: no node answers %s", ErrNoWorker, subjects.FleetRequest(op))
			}
			if ctx.Err() != nil {
				return g.res, gatherEnd(ctx)
			}
			return g.res, err
		case m := <-replies:
			g.reply(m)
		}
	}
}

// gathering is a fleet request's replies so far and its stall: it runs
// from the first reply on, and once every leased node answered, and no
// node without a lease did, it shortens to the grace.
type gathering struct {
	res      *FleetResult
	answered map[string]bool
	leased   map[string]bool // nil until the bucket's keys are known
	unleased bool            // a node without a lease answered
	stall    time.Duration   // as asked (<= 0: none)
	wait     time.Duration   // the stall in force
	sent     time.Time
	timer    *time.Timer
	quiet    <-chan time.Time // fires when wait passed without a reply
}

func newGathering(stall time.Duration, sent time.Time) *gathering {
	return &gathering{res: &FleetResult{}, answered: map[string]bool{}, stall: stall, wait: stall, sent: sent}
}

func (g *gathering) stop() {
	if g.timer != nil {
		g.timer.Stop()
	}
}

// restart starts the stall in force again.
func (g *gathering) restart() {
	switch {
	case g.wait <= 0: // no stall: until ctx ends (or every node answered)
	case g.timer == nil:
		g.timer = time.NewTimer(g.wait)
		g.quiet = g.timer.C
	default:
		g.timer.Reset(g.wait)
	}
}

// reply takes one node's reply.
func (g *gathering) reply(m *nats.Msg) {
	g.restart()
	var fr subjects.FleetReply
	if _, err := subjects.DecodeReply(m.Data, &fr); err != nil {
		g.res.Failed = append(g.res.Failed, err)
		return
	}
	g.res.Nodes = append(g.res.Nodes, fr)
	g.answered[fr.Node] = true
	if g.leased != nil && !g.leased[fr.Node] {
		g.sawUnleased()
	}
	g.shorten()
}

// sawUnleased notes that a node without a lease answered: the bucket does
// not name the whole fleet, so the whole stall is in force again.
func (g *gathering) sawUnleased() {
	g.unleased = true
	if g.wait != g.stall {
		g.wait = g.stall
		g.restart()
	}
}

// leases takes the bucket's keys. An empty bucket (left over, every lease
// lapsed) names no node: it cannot shorten the stall.
func (g *gathering) leases(list []string) {
	if len(list) == 0 {
		return
	}
	g.leased = map[string]bool{}
	for _, n := range list {
		g.leased[n] = true
	}
	for n := range g.answered {
		if !g.leased[n] {
			g.sawUnleased()
		}
	}
	g.shorten()
}

// shorten puts the grace in force once every leased node answered and no
// node without a lease did.
func (g *gathering) shorten() {
	if g.leased == nil || g.unleased || g.wait != g.stall || len(g.answered) == 0 {
		return
	}
	for n := range g.leased {
		if !g.answered[n] {
			return
		}
	}
	g.wait = grace(time.Since(g.sent), g.stall)
	g.restart()
}

// minGrace is the least a gather waits, once every leased node answered,
// for nodes that hold no lease.
const minGrace = 10 * time.Millisecond

// grace is how long a gather waits for more replies once every leased node
// answered: as long again as it took so far (a node that holds no lease,
// such as a worker whose events are not kept in JetStream, answers about
// as fast as the others), at least minGrace, at most the stall.
func grace(took, stall time.Duration) time.Duration {
	g := max(took, minGrace)
	if stall > 0 {
		g = min(g, stall)
	}
	return g
}

// gatherEnd is a gather's error when ctx ended it: none at its deadline
// (a gather's usual end, as request-many's), the cancellation otherwise.
func gatherEnd(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil
	}
	return ctx.Err()
}

// leasedNodes names the nodes holding a lease in the node lease bucket,
// or nil when it cannot be read (no JetStream, no bucket, no permission)
// before ctx ends. It asks the bucket's stream which keys hold a message,
// two JetStream API requests and no consumer. A key deleted when its
// worker stopped keeps its delete marker until the bucket's TTL ends it
// (3 s): until then the gather waits out its stall for that node, as for
// a worker killed a moment ago.
func (c *Client) leasedNodes(ctx context.Context) []string {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil
	}
	stream, err := js.Stream(ctx, "KV_"+subjects.NodeLeaseBucket)
	if err != nil {
		return nil
	}
	prefix := "$KV." + subjects.NodeLeaseBucket + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil
	}
	list := []string{}
	for subject := range info.State.Subjects {
		list = append(list, strings.TrimPrefix(subject, prefix))
	}
	return list
}
