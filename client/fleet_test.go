package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
)

// answer makes nc answer memory.get_status.all as node, after delay.
func answer(t *testing.T, nc *nats.Conn, node string, delay time.Duration, fail bool) {
	t.Helper()
	_, err := nc.Subscribe(subjects.FleetRequest(subjects.GetStatus), func(m *nats.Msg) {
		go func() {
			time.Sleep(delay)
			var body []byte
			if fail {
				body = []byte(`{"success":false,"error_code":"INTERNAL","error_message":"boom"}`)
			} else {
				data, _ := json.Marshal(subjects.FleetReply{Node: node, Instance: node})
				body, _ = json.Marshal(map[string]any{"success": true, "data": json.RawMessage(data)})
			}
			m.Respond(body)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
}

func leases(t *testing.T, nc *nats.Conn, keys ...string) jetstream.KeyValue {
	t.Helper()
	js, _ := jetstream.New(nc)
	kv, err := js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: subjects.NodeLeaseBucket, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := kv.Put(context.Background(), k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	return kv
}

// A lease bucket that exists with no key (left over, every lease lapsed,
// workers that run without one) does not end the gather at the first
// reply: it waits out the stall.
func TestAnEmptyLeaseBucketDoesNotEndAFleetGather(t *testing.T) {
	srv := natstest.JetStream(t)
	nc := natstest.Connect(t, srv)
	leases(t, nc)
	answer(t, natstest.Connect(t, srv), "a", 0, false)
	answer(t, natstest.Connect(t, srv), "b", 50*time.Millisecond, false)
	answer(t, natstest.Connect(t, srv), "c", 50*time.Millisecond, false)
	res, err := New(nc).Fleet(context.Background(), subjects.GetStatus, nil, time.Second)
	if err != nil || len(res.Nodes) != 3 {
		t.Errorf("%d nodes (%v), want 3", len(res.Nodes), err)
	}
}

// 200 leased nodes answering at once: every reply is gathered, and the
// gather ends before the stall.
func TestAFleetGatherTakesTwoHundredRepliesAtOnce(t *testing.T) {
	srv := natstest.JetStream(t)
	nc := natstest.Connect(t, srv)
	var keys []string
	for i := range 200 {
		keys = append(keys, fmt.Sprint("n", i))
	}
	leases(t, nc, keys...)
	resp := natstest.Connect(t, srv)
	for _, k := range keys {
		answer(t, resp, k, 0, false)
	}
	for range 5 {
		start := time.Now()
		res, err := New(nc).Fleet(context.Background(), subjects.GetStatus, nil, 10*time.Second)
		if err != nil || len(res.Nodes) != 200 || time.Since(start) > 5*time.Second {
			t.Errorf("%d nodes (%v) in %v", len(res.Nodes), err, time.Since(start))
		}
	}
}

// A leased node whose whole reply is an error is counted in Failed; the
// gather cannot tell which node failed, so it waits out the stall.
func TestAFleetGatherWaitsTheStallAfterAnErrorReply(t *testing.T) {
	srv := natstest.JetStream(t)
	nc := natstest.Connect(t, srv)
	leases(t, nc, "a", "b")
	answer(t, natstest.Connect(t, srv), "a", 0, false)
	answer(t, natstest.Connect(t, srv), "b", 0, true)
	start := time.Now()
	res, err := New(nc).Fleet(context.Background(), subjects.GetStatus, nil, 300*time.Millisecond)
	if err != nil || len(res.Nodes) != 1 || len(res.Failed) != 1 || time.Since(start) < 300*time.Millisecond {
		t.Errorf("%d nodes %d failed (%v) in %v", len(res.Nodes), len(res.Failed), err, time.Since(start))
	}
}

// No goroutine outlives a gather, however it ends, and none runs past
// ctx.
func TestAFleetGatherLeavesNoGoroutine(t *testing.T) {
	js := natstest.JetStream(t)
	core := natstest.Server(t)
	jnc := natstest.Connect(t, js)
	cnc := natstest.Connect(t, core)
	leases(t, jnc, "a", "gone")
	answer(t, natstest.Connect(t, js), "a", 0, false)
	answer(t, natstest.Connect(t, core), "a", 0, false)
	// a connection with no responders on the core server
	empty := natstest.Server(t)
	enc := natstest.Connect(t, empty)
	// The connections' request muxes (made by the first JetStream API
	// request, living as long as the connection) are made first, and
	// before the check begins: a gather's lease reading, on a goroutine of
	// its own, could still be making one when the gather returns.
	for _, nc := range []*nats.Conn{jnc, cnc, enc} {
		New(nc).leasedNodes(context.Background())
	}
	ignore := goleak.IgnoreCurrent()
	for _, tc := range []struct {
		name  string
		nc    *nats.Conn
		stall time.Duration
		ctx   time.Duration
		err   error
	}{
		{"stall after the last reply", jnc, 100 * time.Millisecond, 5 * time.Second, nil},
		{"ctx ends, no stall", jnc, 0, 200 * time.Millisecond, nil},
		{"no JetStream", cnc, 100 * time.Millisecond, 5 * time.Second, nil},
		{"no JetStream, no stall", cnc, 0, 200 * time.Millisecond, nil},
		{"no responders", enc, 100 * time.Millisecond, 5 * time.Second, ErrNoWorker},
		{"negative stall", jnc, -time.Second, 200 * time.Millisecond, nil},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.ctx)
		start := time.Now()
		res, err := New(tc.nc).Fleet(ctx, subjects.GetStatus, nil, tc.stall)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
		n := 0
		if res != nil {
			n = len(res.Nodes)
		}
		if took > tc.ctx+time.Second {
			t.Errorf("%s: took %v past ctx %v", tc.name, took, tc.ctx)
		}
		t.Logf("%s: %d nodes, %v, in %v", tc.name, n, err, took)
	}
	// Cancelled while waiting.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	res, err := New(jnc).Fleet(ctx, subjects.GetStatus, nil, time.Minute)
	t.Logf("cancelled: %d nodes, %v", len(res.Nodes), err)
	goleak.VerifyNone(t, ignore)
}

// A node without a lease that answers late is gathered within the stall:
// by Fleet once another node without a lease answered, before the leased
// ones all did or within the grace after (the bucket does not name the
// whole fleet), and by FleetExpect, which reads no lease.
func TestANodeWithoutALeaseIsGatheredWithinTheStall(t *testing.T) {
	type answers map[string]time.Duration // by node, its delay
	for _, tc := range []struct {
		name    string
		answers answers
		gather  func(*Client) (*FleetResult, error)
	}{
		{"Fleet, after a node without a lease answered early",
			answers{"unleased-early": 0, "leased": 50 * time.Millisecond, "unleased-late": 250 * time.Millisecond},
			func(c *Client) (*FleetResult, error) {
				return c.Fleet(context.Background(), subjects.GetStatus, nil, 2*time.Second)
			}},
		{"Fleet, after a node without a lease answered within the grace",
			answers{"leased": 100 * time.Millisecond, "unleased-mid": 150 * time.Millisecond, "unleased-late": 400 * time.Millisecond},
			func(c *Client) (*FleetResult, error) {
				return c.Fleet(context.Background(), subjects.GetStatus, nil, 2*time.Second)
			}},
		{"FleetExpect",
			answers{"leased": 0, "unleased-late": 200 * time.Millisecond},
			func(c *Client) (*FleetResult, error) {
				return c.FleetExpect(context.Background(), subjects.GetStatus, nil, 2*time.Second, 0)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.JetStream(t)
			nc := natstest.Connect(t, srv)
			leases(t, nc, "leased")
			for node, delay := range tc.answers {
				answer(t, natstest.Connect(t, srv), node, delay, false)
			}
			res, err := tc.gather(New(nc))
			if err != nil || len(res.Nodes) != len(tc.answers) {
				t.Errorf("%d nodes (%v), want all %d", len(res.Nodes), err, len(tc.answers))
			}
		})
	}
}

func TestGrace(t *testing.T) {
	for _, tc := range []struct{ took, stall, want time.Duration }{
		{time.Millisecond, 300 * time.Millisecond, minGrace},
		{40 * time.Millisecond, 300 * time.Millisecond, 40 * time.Millisecond},
		{time.Second, 300 * time.Millisecond, 300 * time.Millisecond},
		{time.Second, 0, time.Second}, // no stall: as long again
		{time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond},
	} {
		if got := grace(tc.took, tc.stall); got != tc.want {
			t.Errorf("grace(%v, %v) = %v, want %v", tc.took, tc.stall, got, tc.want)
		}
	}
}
