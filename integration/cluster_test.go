package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// startCluster starts n embedded servers routed together on loopback, with
// JetStream clustered, and waits until the routes and the JetStream meta
// leader are up.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	// JetStream clustering needs every route configured up front, so the
	// route ports are picked free before the servers start; the client
	// ports too, in the same pass (all listening at once, so all differ):
	// a client port the kernel picked later could be a route port of a
	// server not started yet, which then could not listen.
	ports, clients := make([]int, n), make([]int, n)
	var held []net.Listener
	for i := range 2 * n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		if i < n {
			ports[i] = l.Addr().(*net.TCPAddr).Port
		} else {
			clients[i-n] = l.Addr().(*net.TCPAddr).Port
		}
	}
	for _, l := range held {
		l.Close()
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var servers []*server.Server
	for i := 0; i < n; i++ {
		servers = append(servers, serve(t, &server.Options{
			ServerName: fmt.Sprintf("s%d", i), Host: "127.0.0.1", Port: clients[i], NoSigs: true, NoLog: true,
			JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "memworker-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes,
		}))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ready := true
		for _, s := range servers {
			if s.NumRoutes() < n-1 {
				ready = false
			}
		}
		if ready && servers[0].JetStreamIsClustered() {
			leader := false
			for _, s := range servers {
				leader = leader || s.JetStreamIsLeader()
			}
			if leader {
				return servers
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("cluster did not form")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// urls lists the client URLs of servers, first the one to prefer.
func urls(prefer *server.Server, servers []*server.Server) string {
	list := []string{prefer.ClientURL()}
	for _, s := range servers {
		if s != prefer {
			list = append(list, s.ClientURL())
		}
	}
	return strings.Join(list, ",")
}

func TestClusterRoutesOperationsFleetAndEvents(t *testing.T) {
	servers := startCluster(t, 3)
	startWorker(t, servers[0], "n1")
	startWorker(t, servers[1], "n2")
	nc := connect(t, servers[2])
	next := subscribeEvents(t, nc, "n2-gpu1")

	// Every op routes across the cluster.
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 15 * GiB, ModelID: "m"}, &a) // n1-gpu0 to warning
	call(t, nc, subjects.Allocate, "n2-gpu1", subjects.AllocateRequest{SizeBytes: 15 * GiB}, nil)
	// The startup event may still be on its way; the warning follows it.
	r := next(5 * time.Second)
	if r.data.Reason == events.ReasonStartup {
		r = next(5 * time.Second)
	}
	if r.data.Level != subjects.LevelWarning || r.data.Node != "n2" {
		t.Errorf("pressure event from n2 through the cluster: %+v", r.data)
	}
	for _, op := range subjects.Ops() {
		msg := request(t, nc, op, "n1-gpu1", []byte(`{}`))
		if len(msg.Data) == 0 {
			t.Errorf("%s: empty reply", op)
		}
	}

	// A fleet request gets every node once, with all its devices.
	cl := client.New(nc)
	res, err := cl.Fleet(context.Background(), subjects.GetStatus, nil, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]int{}
	levels := map[string]subjects.Level{}
	for _, n := range res.Nodes {
		nodes[n.Node] += len(n.Devices)
		for _, d := range n.Devices {
			var st subjects.StatusReply
			if !d.Success {
				t.Errorf("%s: %s %s", d.DeviceID, d.ErrorCode, d.ErrorMessage)
				continue
			}
			if err := json.Unmarshal(d.Data, &st); err != nil {
				t.Fatal(err)
			}
			levels[d.DeviceID] = st.Pressure.Level
		}
	}
	if len(res.Nodes) != 2 || nodes["n1"] != 2 || nodes["n2"] != 2 || len(res.Failed) != 0 {
		t.Errorf("fleet replies %v (failed %v), want n1 and n2 with 2 devices each", nodes, res.Failed)
	}
	// (On the cuda backend both test nodes share the host's GPUs, so the
	// other two devices may be at warning too.)
	if levels["n1-gpu0"] != subjects.LevelWarning || levels["n2-gpu1"] != subjects.LevelWarning {
		t.Errorf("fleet status levels %v, want n1-gpu0 and n2-gpu1 at warning", levels)
	}
	if _, err := cl.Fleet(context.Background(), subjects.Allocate, nil, time.Second); err == nil {
		t.Error("allocate is not a fleet operation, but Fleet sent it")
	}
}

func TestSecondWorkerForANodeRefusesUnlessStandby(t *testing.T) {
	servers := startCluster(t, 2)
	startWorker(t, servers[0], "n1")
	cfg := worker.DefaultConfig()
	cfg.Node = "n1"
	cfg.Backend = newTestBackend(t, 1, GiB, true)
	w, err := worker.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Run(ctx, connect(t, servers[1])); !errors.Is(err, worker.ErrNodeTaken) {
		t.Fatalf("a second worker for n1 on another server: %v, want ErrNodeTaken", err)
	}
}

// TestRollingRestartLosesNoRequest stops the active worker of a node while
// a client keeps asking (and, as a client should, asks again when nobody
// answers); the standby, which served nothing meanwhile, takes over within
// 5 s, and every request gets an answer.
func TestRollingRestartLosesNoRequest(t *testing.T) {
	servers := startCluster(t, 3)
	nc := connect(t, servers[2])
	life, err := nc.SubscribeSync(subjects.LifecycleEvents("n1"))
	if err != nil {
		t.Fatal(err)
	}
	activeCtx, stopActive := context.WithCancel(context.Background())
	active := startWorkerCtx(t, activeCtx, servers[0], "n1")
	standby := startWorker(t, servers[1], "n1", standingBy())

	var answered, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Between the two workers nobody answers (a request already
			// routed to the stopping one may be lost with its
			// subscription): a client asks again.
			var msg *nats.Msg
			var err error
			for range 5 {
				msg, err = nc.Request(subjects.Request(subjects.GetUsage, "n1-gpu0"), nil, time.Second)
				if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				t.Logf("a request across the restart: %v", err)
				failed.Add(1)
				continue
			}
			if _, err := subjects.DecodeReply(msg.Data, nil); err != nil {
				failed.Add(1)
				continue
			}
			answered.Add(1)
		}
	})
	time.Sleep(200 * time.Millisecond)
	stopActive() // SIGTERM: drain
	active.wait()
	select {
	case <-standby.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("the standby did not take over within 5 s")
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || answered.Load() == 0 {
		t.Errorf("%d answered, %d failed across the restart", answered.Load(), failed.Load())
	}
	var types []string
	for {
		msg, err := life.NextMsg(500 * time.Millisecond)
		if err != nil {
			break
		}
		e, d, err := events.DecodeLifecycle(msg)
		if err != nil || d.Node != "n1" {
			t.Fatalf("lifecycle event %s: %v", msg.Data, err)
		}
		types = append(types, e.Type())
	}
	if strings.Join(types, ",") != events.TypeWorkerStarted+","+events.TypeWorkerStopped+","+events.TypeWorkerStarted {
		t.Errorf("lifecycle events %v, want a start, a stop, then the standby's start", types)
	}
}

// TestServerLossMidLoad shuts down the server a worker is connected to
// while clients allocate and free with retries; the worker reconnects to
// another server, and no allocation is lost or doubled.
func TestServerLossMidLoad(t *testing.T) {
	servers := startCluster(t, 3)
	wnc, err := nats.Connect(urls(servers[0], servers), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close)
	h := startWorkerOn(t, context.Background(), wnc, "n1")
	cnc, err := nats.Connect(urls(servers[1], servers), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cnc.Close)
	cl := client.New(cnc)
	cl.Timeout = 2 * time.Second

	load := startRetryingLoad(t, cl, "n1-gpu0", 40, MiB)
	time.Sleep(100 * time.Millisecond)
	servers[0].Shutdown() // the worker's server
	load.wait(t, cl)
	if wnc.ConnectedUrl() == servers[0].ClientURL() {
		t.Error("the worker is still on the server that went away")
	}
	checkLedger(t, cnc, h, "n1-gpu0", 0)
}

// retryingLoad is 4 clients allocating and freeing on one device, each
// request retried with its request_id across connection loss; live is what
// the clients believe is allocated.
type retryingLoad struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	live map[string]bool
	dev  string
}

func startRetryingLoad(t *testing.T, cl *client.Client, dev string, rounds int, size int64) *retryingLoad {
	l := &retryingLoad{live: map[string]bool{}, dev: dev}
	do := func(id string, op subjects.Op, data, out any) error {
		return retry(func() error {
			_, err := cl.DoID(context.Background(), id, op, dev, data, out)
			return err
		})
	}
	for c := 0; c < 4; c++ {
		l.wg.Go(func() {
			for i := 0; i < rounds; i++ {
				id := fmt.Sprintf("c%d-%d", c, i)
				var a subjects.Allocation
				if err := do(id, subjects.Allocate, subjects.AllocateRequest{SizeBytes: size}, &a); err != nil {
					t.Errorf("allocate %s: %v", id, err)
					return
				}
				l.mu.Lock()
				l.live[a.AllocationID] = true
				l.mu.Unlock()
				if i%2 == 1 {
					if err := do(id+"-free", subjects.Deallocate, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil); err != nil {
						t.Errorf("deallocate %s: %v", id, err)
						return
					}
					l.mu.Lock()
					delete(l.live, a.AllocationID)
					l.mu.Unlock()
				}
				time.Sleep(3 * time.Millisecond)
			}
		})
	}
	return l
}

// wait waits for the load and checks the worker holds exactly what the
// clients believe: nothing lost, nothing allocated twice by a retry.
func (l *retryingLoad) wait(t *testing.T, cl *client.Client) {
	t.Helper()
	l.wg.Wait()
	var page subjects.AllocationsReply
	if err := retry(func() error {
		_, err := cl.Do(context.Background(), subjects.GetAllocations, l.dev, subjects.AllocationsRequest{Limit: 1000}, &page)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if page.TotalCount != len(l.live) {
		t.Errorf("worker holds %d allocations, clients hold %d", page.TotalCount, len(l.live))
	}
	for _, a := range page.Allocations {
		if !l.live[a.AllocationID] {
			t.Errorf("allocation %s is held but no client knows it: a retry allocated twice", a.AllocationID)
		}
	}
}

// retry retries f until it succeeds or a non-transient error comes, for up
// to 10 s, as a client does across a server loss.
func retry(f func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		var we *subjects.Error
		if err == nil || errors.As(err, &we) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEventsSurviveTheLossOfTheStreamLeader: on a 3-server cluster the
// event stream has 3 replicas, so when the server leading it goes, the
// events kept before and those published after are all replayed.
func TestEventsSurviveTheLossOfTheStreamLeader(t *testing.T) {
	servers := startCluster(t, 3)
	wnc, err := nats.Connect(urls(servers[0], servers))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close)
	h := startWorkerOn(t, context.Background(), wnc, "n1", withDevices(1, GiB))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The stream, as the worker made it.
	var stream jetstream.Stream
	streamOn := func(s *server.Server) jetstream.Stream {
		nc := connect(t, s)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		for {
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := js.Stream(callCtx, events.StreamName)
			cancel()
			if err == nil && st.CachedInfo().Cluster != nil && st.CachedInfo().Cluster.Leader != "" {
				return st
			}
			if ctx.Err() != nil {
				t.Fatalf("no stream %s with a leader: %v", events.StreamName, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	stream = streamOn(servers[1])
	if r := stream.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("the event stream has %d replicas on a 3-server cluster, want 3", r)
	}
	nc := connect(t, servers[1])
	drive(t, nc, h, "n1-gpu0")

	// Wait until the stream holds the first round, then stop its leader.
	for stream.CachedInfo().State.Msgs < uint64(len(wantLevels)) {
		callCtx, cancelCall := context.WithTimeout(ctx, 2*time.Second)
		_, err := stream.Info(callCtx)
		cancelCall()
		if err != nil || ctx.Err() != nil {
			t.Fatalf("the stream holds %d events: %v", stream.CachedInfo().State.Msgs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	leader := stream.CachedInfo().Cluster.Leader
	var rest []*server.Server
	for _, s := range servers {
		if s.Name() == leader {
			s.Shutdown()
			continue
		}
		rest = append(rest, s)
	}
	if len(rest) != 2 {
		t.Fatalf("stream leader %q is none of the servers", leader)
	}
	// A new leader, then a second round.
	for {
		stream = streamOn(rest[0])
		if stream.CachedInfo().Cluster.Leader != leader {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Requests sent while the cluster recovers from a server's loss can be
	// lost in flight (core NATS delivers at most once): these go as a
	// client's do, retried with their request_id, as TestServerLossMidLoad's.
	cl := client.New(connect(t, rest[0]))
	cl.Timeout = 2 * time.Second
	n := 0
	driveWith(t, h, func(op subjects.Op, data, out any) {
		n++
		id := fmt.Sprintf("after-the-loss-%d", n)
		if err := retry(func() error {
			_, err := cl.DoID(ctx, id, op, "n1-gpu0", data, out)
			if err != nil {
				t.Logf("%s %s: %v (worker on %s, %d reconnects)", op, id, err, wnc.ConnectedServerName(), wnc.Stats().Reconnects)
			}
			return err
		}); err != nil {
			t.Fatalf("%s %s: %v", op, id, err)
		}
	})

	want := append(append([]subjects.Level{}, wantLevels...), wantLevels[1:]...)
	var got []subjects.Level
	for len(got) < len(want) && ctx.Err() == nil {
		got = replayLevels(t, ctx, stream, time.Second)
	}
	if !slices.Equal(got, want) {
		t.Errorf("replayed %v after the leader's loss, want %v", got, want)
	}
}
