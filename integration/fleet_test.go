package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
)

// TestAFleetRequestEndsWhenEveryLeasedNodeAnswered: the client knows the
// fleet from the node lease bucket, so a fleet request returns a short
// grace after every node holding a lease answered, instead of waiting out
// the stall after the last reply; a lease whose node does not answer (a worker killed a
// moment ago, or one stopped a moment ago: its key's delete marker lives
// until the TTL) costs the stall and no node is left out; a fleet without
// JetStream waits out the stall as before.
func TestAFleetRequestEndsWhenEveryLeasedNodeAnswered(t *testing.T) {
	t.Parallel() // servers and workers of its own
	gather := func(t *testing.T, cl *client.Client, stall time.Duration) ([]string, time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*stall+10*time.Second)
		defer cancel()
		start := time.Now()
		res, err := cl.Fleet(ctx, subjects.GetStatus, nil, stall)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		var nodes []string
		for _, n := range res.Nodes {
			nodes = append(nodes, n.Node)
		}
		slices.Sort(nodes)
		return nodes, took
	}
	all := []string{"n1", "n2", "n3"}

	srv := startJetStreamServer(t)
	for _, n := range all {
		startWorker(t, srv, n, withDevices(1, GiB))
	}
	nc := connect(t, srv)
	cl := client.New(nc)
	// A stall no test waits out: only the leases can end it early.
	const long = time.Minute
	if nodes, took := gather(t, cl, long); !slices.Equal(nodes, all) || took >= long {
		t.Errorf("with every node leased: %v in %v, want %v before the %v stall", nodes, took, all, long)
	}

	// No stall (0): until every leased node answered, else until ctx ends.
	core := startServer(t)
	startWorker(t, core, "n1", withDevices(1, GiB))
	const stall = 300 * time.Millisecond
	for _, tc := range []struct {
		name    string
		srv     *server.Server
		leasing bool
		within  time.Duration
	}{{"leased", srv, true, 10 * time.Second}, {"without JetStream", core, false, stall}} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.within)
		start := time.Now()
		res, err := client.New(connect(t, tc.srv)).Fleet(ctx, subjects.GetStatus, nil, 0)
		ended := ctx.Err() != nil
		cancel()
		if err != nil || len(res.Nodes) == 0 || ended == tc.leasing {
			t.Errorf("%s, no stall: %d nodes, %v, after %v (ctx ended: %v)", tc.name, len(res.Nodes), err, time.Since(start), ended)
		}
	}
	if nodes, took := gather(t, client.New(connect(t, core)), stall); !slices.Equal(nodes, all[:1]) || took < stall {
		t.Errorf("without JetStream: %v in %v, want [n1] after the %v stall", nodes, took, stall)
	}

	// A lease nobody answers for, and a lease deleted a moment ago (its
	// marker lives until the bucket's TTL ends it), cost the stall.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leases, err := js.KeyValue(ctx, subjects.NodeLeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Put(ctx, "gone", []byte("a worker killed a moment ago")); err != nil {
		t.Fatal(err)
	}
	if nodes, took := gather(t, cl, stall); !slices.Equal(nodes, all) || took < stall {
		t.Errorf("with a lease nobody answers for: %v in %v, want %v after the %v stall", nodes, took, all, stall)
	}
	if err := leases.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if nodes, took := gather(t, cl, stall); !slices.Equal(nodes, all) || took < stall {
		t.Errorf("with a lease deleted a moment ago: %v in %v, want %v after the %v stall", nodes, took, all, stall)
	}
}
