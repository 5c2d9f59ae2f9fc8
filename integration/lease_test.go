package integration

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/node"
)

// The node's lease lives in JetStream. When the worker cannot renew it
// (JetStream away, its server restarting) the worker must not stop: that
// would give up every allocation it holds for its clients. It grants
// nothing until it renews again, and serves the rest.

// TestJetStreamAwayPausesGrants: with JetStream disabled on the worker's
// server past half the lease's TTL, an allocate gets OVERLOADED saying
// why, a read and a free are served, a request that may wait waits, as
// does a transfer's destination, and once JetStream is back the waiter is
// granted, the transfer completes and allocates pass again;
// the metric tells the pause. The worker never stops.
func TestJetStreamAwayPausesGrants(t *testing.T) {
	t.Parallel() // a server and worker of their own, mostly waiting: beside the other long ones
	srv := startJetStreamServer(t)
	reg := prometheus.NewRegistry()
	h := startWorker(t, srv, "n1", withDevices(1, 4*GiB), withConfig(func(c *worker.Config) { c.Metrics = reg }))
	nc := connect(t, srv)
	var kept subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: GiB}, &kept)
	var freed subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: GiB}, &freed)

	store := srv.JetStreamConfig().StoreDir
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	paused := func() bool {
		return metricValue(t, scrape(t, reg), "memworker_node_lease_unconfirmed", nil) == 1
	}
	waitFor(t, 10*time.Second, "the worker to pause its grants", paused)
	r := callErr(t, nc, subjects.Allocate, "n1-gpu0", mustJSON(t, map[string]any{"data": subjects.AllocateRequest{SizeBytes: GiB}}), subjects.CodeOverloaded)
	if !strings.Contains(r.ErrorMessage, "lease") || !strings.Contains(r.ErrorMessage, "retry") {
		t.Errorf("OVERLOADED while paused says %q: it should name the lease and say to retry", r.ErrorMessage)
	}
	var st subjects.StatusReply
	call(t, nc, subjects.GetStatus, "n1-gpu0", nil, &st)
	call(t, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: freed.AllocationID}, nil)
	var moving subjects.TransferStatus // its destination waits for the door
	call(t, nc, subjects.Transfer, "n1-gpu0", subjects.TransferRequest{AllocationID: kept.AllocationID, TargetAllocationType: subjects.Pinned, Mode: subjects.ModeCopy}, &moving)
	waited := make(chan *nats.Msg, 1)
	go func() {
		body, _ := subjects.NewRequest("", subjects.Allocate, subjects.AllocateRequest{SizeBytes: GiB, WaitSeconds: 30, TTLSeconds: 60})
		msg, err := nc.Request(subjects.Request(subjects.Allocate, "n1-gpu0"), body, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		waited <- msg
	}()
	time.Sleep(200 * time.Millisecond) // it waits
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: store}); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-waited:
		if msg != nil {
			if _, err := subjects.DecodeReply(msg.Data, nil); err != nil {
				t.Errorf("the waiter once the lease was renewed: %v", err)
			}
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiter was not answered once JetStream was back")
	}
	if paused() {
		t.Error("still paused once the waiter was granted")
	}
	if done := waitTransfer(t, nc, "n1-gpu0", moving.TransferID); done.Status != subjects.TransferCompleted {
		t.Errorf("a transfer asked while paused: %+v, want completed once the lease was renewed", done)
	}
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: GiB}, nil)
	if _, _, err := h.Locate("n1-gpu0", kept.AllocationID); err != nil {
		t.Errorf("the allocation made before the pause: %v", err)
	}
}

// TestARivalStopsAPausedWorker: a worker that cannot renew its lease
// stops once another instance of its node answers discovery (a standby
// that reached the bucket and took the lapsed key over), so the two share
// the node's subjects only briefly.
func TestARivalStopsAPausedWorker(t *testing.T) {
	t.Parallel() // a server and worker of their own, mostly waiting: beside the other long ones
	srv := startJetStreamServer(t)
	ran := make(chan error, 1)
	startWorker(t, srv, "n1", withDevices(1, GiB), withRunErr(ran))
	nc := connect(t, srv)
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the worker to pause its grants", func() bool {
		msg := request(t, nc, subjects.Allocate, "n1-gpu0", mustJSON(t, map[string]any{"data": subjects.AllocateRequest{SizeBytes: MiB}}))
		return strings.Contains(string(msg.Data), string(subjects.CodeOverloaded))
	})
	select {
	case err := <-ran:
		t.Fatalf("a paused worker stopped with no rival: %v", err)
	case <-time.After(time.Second):
	}
	rival, err := micro.AddService(nc, micro.Config{Name: worker.ServiceName, Version: "1.0.0", Metadata: map[string]string{"node": "n1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer rival.Stop()
	select {
	case err := <-ran:
		if !errors.Is(err, node.ErrLeaseLost) || !strings.Contains(err.Error(), rival.Info().ID) {
			t.Errorf("the paused worker stopped with %v, want the lease lost to %s", err, rival.Info().ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the paused worker went on beside a rival")
	}
}

// TestALongOperationDoesNotHoldTheLeaseBack: while one device's lock is
// held for seconds (a slow offload) and JetStream goes away for 1.8 s,
// the lease is renewed as soon as JetStream is back: no standby can take
// the node, and the other device grants again. (Found by review: the
// renewals used to wait for every device's lock to pause it.)
func TestALongOperationDoesNotHoldTheLeaseBack(t *testing.T) {
	t.Parallel() // a server and worker of their own, mostly waiting: beside the other long ones
	srv := startJetStreamServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, 4*GiB))
	nc := connect(t, srv)
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 64 * MiB, ModelID: "m"}, nil)
	h.faults(t).SetCopyDelay(4 * time.Second)
	offloaded := make(chan error, 1)
	go func() { // holds n1-gpu0's lock for 4 s
		zero := 0.0
		body, _ := subjects.NewRequest("", subjects.ModelOptimize, subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &zero})
		_, err := nc.Request(subjects.Request(subjects.ModelOptimize, "n1-gpu0"), body, 20*time.Second)
		offloaded <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	store := srv.JetStreamConfig().StoreDir
	if err := srv.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1800 * time.Millisecond)
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: store}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	for time.Since(start) < 4*time.Second { // a standby polling for the key
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if kv, err := js.KeyValue(ctx, node.NodeLeaseBucket); err == nil {
			if _, err := kv.Create(ctx, "n1", []byte("the-standby")); err == nil {
				t.Fatalf("a standby took the node %.1f s after a 1.8 s JetStream hiccup", time.Since(start).Seconds())
			}
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	call(t, nc, subjects.Allocate, "n1-gpu1", subjects.AllocateRequest{SizeBytes: 64 * MiB}, nil)
	if err := <-offloaded; err != nil {
		t.Fatal(err)
	}
}

// TestAServerRestartKeepsTheWorker: the worker's only server (with
// JetStream) goes away for longer than the lease's TTL and comes back on
// the same port and store; the worker reconnects, still holds what it
// held, and grants again.
func TestAServerRestartKeepsTheWorker(t *testing.T) {
	// Not in parallel: the port the server gives up for 4 s must still be
	// free when it comes back.
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir()}
	srv := serve(t, opts)
	opts.Port = srv.Addr().(*net.TCPAddr).Port
	reconnecting := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	ctx, stop := context.WithCancel(context.Background())
	h := startWorkerOn(t, ctx, reconnecting(), "n1", withDevices(1, 4*GiB))
	nc := reconnecting()
	var kept subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: GiB}, &kept)
	srv.Shutdown()
	srv.WaitForShutdown()
	time.Sleep(4 * time.Second) // past the lease's TTL (3 s)
	serve(t, opts)
	waitFor(t, 15*time.Second, "the worker to grant again", func() bool {
		body, _ := subjects.NewRequest("", subjects.Allocate, subjects.AllocateRequest{SizeBytes: GiB})
		msg, err := nc.Request(subjects.Request(subjects.Allocate, "n1-gpu0"), body, 2*time.Second)
		if err != nil {
			return false
		}
		_, err = subjects.DecodeReply(msg.Data, nil)
		return err == nil
	})
	if _, _, err := h.Locate("n1-gpu0", kept.AllocationID); err != nil {
		t.Errorf("the allocation made before the restart: %v", err)
	}
	select {
	case <-h.done:
		t.Error("the worker stopped")
	default:
	}
	stop() // while its server is up
	h.wait()
}

// waitFor polls ok every 50 ms until it holds, for at most d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
	}
}
