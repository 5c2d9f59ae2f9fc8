// Command membench measures memworker beside the fastest thing that could
// stand in its place: a bare NATS micro echo endpoint on the same server,
// driven by the same clients in the same run. It starts an embedded server
// and sim workers in this process (or targets --server), and prints a table
// of throughput, p50 and p99 for each case and concurrency, with ratios to
// echo; then the fleet fan-out from 1 to 16 nodes and the monitor's CPU
// cost. With --server it measures a worker already running on that server
// (a CUDA worker on a GPU host, say) beside an echo endpoint it adds there,
// or that another membench (--echo serve) serves from a process of its own.
package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/sim"
)

type cli struct {
	Duration     time.Duration `default:"1s" help:"How long each case runs at each concurrency, each round."`
	Warmup       time.Duration `default:"3s" help:"How long all cases run, unmeasured, at the highest concurrency before the first round: a freshly started worker's heap grows into pages never touched, and each first touch is a page fault (over 10 µs in a virtual machine)."`
	Rounds       int           `default:"3" help:"Rounds of all cases at each concurrency; the table shows the medians."`
	Concurrency  string        `default:"1,8,64" help:"Client concurrencies, comma-separated."`
	FleetNodes   int           `name:"fleet-nodes" default:"16" help:"Largest fleet for the fan-out case (0 skips it)."`
	Cluster      int           `default:"1" help:"NATS servers the fleet case runs on: 1, or a cluster of this many (workers spread over them, the client on the first)."`
	Memctl       string        `help:"Path of a memctl binary: the fleet case also times memctl status --all (a process start each)."`
	IdleWorkers  int           `name:"idle-workers" help:"Measure the CPU cost of this many idle sim workers (2 devices each) on one server (0 skips it)."`
	IdleFor      time.Duration `name:"idle-for" default:"30s" help:"How long the idle case measures."`
	Monitor      time.Duration `default:"10s" help:"How long to measure the monitor's CPU cost (0 skips it)."`
	Cases        string        `default:"echo,sized,get_status,pair,allocate+deallocate" help:"Cases to run (echo always runs first; sized is echo answering with a reply as large as get_status's, pair an allocate and a deallocate answered by echo with the worker's replies)."`
	CPUProfile   string        `name:"cpuprofile" help:"Write a CPU profile of the request cases to this file."`
	ReadHandlers int           `name:"read-handlers" help:"Subscriptions serving each read-only operation of the measured worker's device (default: the worker's, one per 4 cores, at most 4)."`
	Backend      string        `default:"sim" enum:"sim,cuda" help:"Backend of the measured worker: sim (one 64 GiB device) or cuda (the host's first GPU; needs a build with the cuda tag). The fleet and monitor cases use sim."`
	Server       string        `help:"URL of a NATS server where a worker already runs: measure it instead of an embedded sim worker (the fleet and monitor cases are skipped)."`
	Device       string        `help:"Device to measure (default: the embedded worker's, or with --server the first device that answers memory.get_status.all)."`
	Echo         string        `default:"here" enum:"here,serve,elsewhere" help:"Where the echo endpoints run: here (this process), serve (this process serves them for --server's worker and measures nothing, until interrupted), or elsewhere (another membench --echo serve on --server serves them): so the echo can run in a process of its own, as the worker does."`
	client.Flags

	served chan struct{} // tests: closing it ends --echo serve, as an interrupt does
}

func main() {
	var c cli
	kong.Parse(&c, kong.Description("Benchmark memworker against a bare NATS echo endpoint."))
	if err := run(&c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "membench:", err)
		os.Exit(1)
	}
}

func run(c *cli, out io.Writer) error {
	var levels []int
	for _, s := range strings.Split(c.Concurrency, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("--concurrency %q", c.Concurrency)
		}
		levels = append(levels, n)
	}
	if c.Rounds < 1 {
		return fmt.Errorf("--rounds %d: at least 1", c.Rounds)
	}
	c.Echo = cmp.Or(c.Echo, "here") // a cli made by a test, not parsed
	if c.Echo != "here" && c.Server == "" {
		return fmt.Errorf("--echo %s needs --server", c.Echo)
	}
	url, dev := c.Server, c.Device
	opts, err := c.Options()
	if err != nil {
		return err
	}
	if url == "" {
		srv, err := startServer()
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stop, err := startWorkers(ctx, srv.ClientURL(), "bench", 1, benchBackend(c.Backend), time.Hour, c.ReadHandlers)
		if err != nil {
			return err
		}
		defer stop()
		url, opts = srv.ClientURL(), nil
		if dev == "" {
			dev = subjects.DeviceID("bench0", 0)
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	if dev == "" {
		if dev, err = firstDevice(nc); err != nil {
			return err
		}
	}
	withPair := slices.Contains(strings.Split(c.Cases, ","), "pair")
	if c.Echo == "serve" {
		stop, _, err := serveEcho(url, opts, nc, dev, true)
		if err != nil {
			return err
		}
		defer stop()
		fmt.Fprintf(out, "membench: serving the echo endpoints for device %s on %s until interrupted\n", dev, url)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case <-sig:
		case <-c.served:
		}
		return nil
	}
	status, _ := subjects.NewRequest("", subjects.GetStatus, nil)
	var sized []byte
	if c.Echo == "here" {
		stop, reply, err := serveEcho(url, opts, nc, dev, withPair)
		if err != nil {
			return err
		}
		defer stop()
		sized = reply
	} else {
		// The bytes the other process answers with, for the case's name.
		msg, err := nc.Request("bench.echo.sized", status, 5*time.Second)
		if err != nil {
			return fmt.Errorf("the echo in another process (membench --echo serve): %w", err)
		}
		sized = msg.Data
	}

	handlers := "the running worker's read handlers"
	if c.Server == "" {
		handlers = fmt.Sprintf("%d read handlers", cmp.Or(c.ReadHandlers, worker.DefaultReadHandlers()))
	}
	echoAt := "echo endpoints in this process"
	if c.Echo == "elsewhere" {
		echoAt = "echo endpoints in another process"
	}
	fmt.Fprintf(out, "membench: %s, GOMAXPROCS %d, %v warm-up, %d rounds of %v per case, device %s, %s, %s; medians\n\n",
		cpuName(), runtimeProcs(), c.Warmup, c.Rounds, c.Duration, dev, handlers, echoAt)
	cases := []struct {
		key, name string
		op        func(*nats.Conn) error
	}{
		{"echo", "echo", func(nc *nats.Conn) error { return req(nc, "bench.echo", status) }},
		{"sized", fmt.Sprintf("echo, %d B reply", len(sized)), func(nc *nats.Conn) error { return req(nc, "bench.echo.sized", status) }},
		{"get_status", "get_status", func(nc *nats.Conn) error { return req(nc, subjects.Request(subjects.GetStatus, dev), status) }},
		{"pair", "echo, allocate+deallocate replies", func(nc *nats.Conn) error { return allocFree(nc, echoDevice) }},
		{"allocate+deallocate", "allocate+deallocate", func(nc *nats.Conn) error { return allocFree(nc, dev) }},
	}
	t := table.NewWriter()
	t.SetOutputMirror(out)
	t.SetStyle(table.StyleLight)
	t.AppendHeader(table.Row{"case", "clients", "req/s", "p50", "p99", "CPU/req", "req/s vs echo", "p50 vs echo"})
	if c.CPUProfile != "" {
		f, err := os.Create(c.CPUProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var picked []int
	for i, cs := range cases {
		if i == 0 || slices.Contains(strings.Split(c.Cases, ","), cs.key) {
			picked = append(picked, i)
		}
	}
	if c.Warmup > 0 {
		for _, i := range picked {
			if _, err := drive(nc, slices.Max(levels), c.Warmup/time.Duration(len(picked)), cases[i].op); err != nil {
				return fmt.Errorf("%s, warming up: %w", cases[i].name, err)
			}
		}
	}
	var sameSize [2][]string // get_status, allocate+deallocate
	for _, n := range levels {
		// Rounds interleave the cases, so drift on a shared machine falls
		// on all of them; each ratio is taken within a round, then the
		// median of every figure across rounds is shown. Every other round
		// runs the cases in reverse order, so neither case of a comparison
		// always runs first (after the other's load).
		rounds := make([][]result, len(cases))
		for round := range c.Rounds {
			order := slices.Clone(picked)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			done := make([]result, len(cases))
			for _, i := range order {
				cs := cases[i]
				r, err := drive(nc, n, c.Duration, cs.op)
				if err != nil {
					return fmt.Errorf("%s: %w", cs.name, err)
				}
				if cs.key == "allocate+deallocate" || cs.key == "pair" {
					r.perSecond *= 2 // two requests per pair
					r.cpu /= 2
				}
				done[i] = r
			}
			echo := done[0]
			for _, i := range picked {
				r := done[i]
				r.vsEcho, r.p50VsEcho = r.perSecond/echo.perSecond, float64(r.p50)/float64(echo.p50)
				rounds[i] = append(rounds[i], r)
			}
		}
		// The worker against an echo that answers with its very bytes.
		for k, ab := range [][2]int{{1, 2}, {3, 4}} {
			if len(rounds[ab[0]]) > 0 && len(rounds[ab[1]]) > 0 {
				sameSize[k] = append(sameSize[k], fmt.Sprintf("%d clients: %s", n, against(rounds[ab[0]], rounds[ab[1]])))
			}
		}
		for _, i := range picked {
			r := median(rounds[i])
			t.AppendRow(table.Row{cases[i].name, n, fmt.Sprintf("%.0f", r.perSecond), r.p50, r.p99, r.cpu,
				fmt.Sprintf("%.2fx", r.vsEcho), fmt.Sprintf("%.2fx", r.p50VsEcho)})
		}
		t.AppendSeparator()
	}
	t.Render()
	cpuNote := "the whole process's CPU time (clients, server, worker)"
	switch {
	case c.Echo == "elsewhere":
		cpuNote = "this process's CPU time (clients; the server, worker and echo run elsewhere)"
	case c.Server != "":
		cpuNote = "this process's CPU time (clients and echo; the server and worker run elsewhere)"
	}
	fmt.Fprintf(out, "allocate+deallocate and its echo pair count both requests; CPU/req is %s per request; errors abort the run.\n", cpuNote)
	if len(sameSize[0]) > 0 {
		fmt.Fprintf(out, "get_status against the same-size echo (medians of the rounds' ratios): %s\n", strings.Join(sameSize[0], "; "))
	}
	if len(sameSize[1]) > 0 {
		fmt.Fprintf(out, "allocate+deallocate against the same-size echo pair (medians of the rounds' ratios): %s\n", strings.Join(sameSize[1], "; "))
	}

	if c.Server != "" {
		return nil // the fleet and monitor cases start their own workers
	}
	if c.FleetNodes > 0 {
		if err := fleet(url, c.FleetNodes, c.Cluster, c.Memctl, out); err != nil {
			return err
		}
	}
	if c.Monitor > 0 {
		if err := monitorCost(c.Monitor, out); err != nil {
			return err
		}
	}
	if c.IdleWorkers > 0 {
		if err := idleCost(c.IdleWorkers, c.IdleFor, out); err != nil {
			return err
		}
	}
	return nil
}

// firstDevice asks the fleet for its devices and picks the first that
// answers.
func firstDevice(nc *nats.Conn) (string, error) {
	res, err := client.New(nc).Fleet(context.Background(), subjects.GetStatus, nil, 500*time.Millisecond)
	if err != nil {
		return "", err
	}
	for _, n := range res.Nodes {
		for _, d := range n.Devices {
			if d.Success {
				return d.DeviceID, nil
			}
		}
	}
	return "", fmt.Errorf("no worker answered memory.get_status.all: name one with --device")
}

func req(nc *nats.Conn, subject string, body []byte) error {
	_, err := nc.Request(subject, body, 5*time.Second)
	return err
}

// getStatus is dev's get_status reply.
func getStatus(nc *nats.Conn, dev string) ([]byte, error) {
	status, _ := subjects.NewRequest("", subjects.GetStatus, nil)
	msg, err := nc.Request(subjects.Request(subjects.GetStatus, dev), status, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("get_status of %s: %w", dev, err)
	}
	return msg.Data, nil
}

// serveEcho serves the echo endpoints on a connection of their own to url:
// bench.echo answers with the request; bench.echo.sized with dev's
// get_status reply, taken once (what a status costs NATS for its size
// alone, with no work behind it); with pair, echoDevice's allocate and
// deallocate with dev's own replies, taken once (the client does all it
// does for the real pair, the worker nothing). It returns the sized reply
// once the endpoints' subscriptions reached the server (else: no
// responders), and a func that stops them.
func serveEcho(url string, opts []nats.Option, nc *nats.Conn, dev string, pair bool) (stop func(), sized []byte, err error) {
	echoConn, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			echoConn.Close()
		}
	}()
	echo, err := micro.AddService(echoConn, micro.Config{Name: "echo", Version: "1.0.0", Endpoint: &micro.EndpointConfig{
		Subject: "bench.echo", Handler: micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(r.Data()) }),
	}})
	if err != nil {
		return nil, nil, err
	}
	if sized, err = getStatus(nc, dev); err != nil {
		return nil, nil, err
	}
	if err = echo.AddEndpoint("sized", micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(sized) }), micro.WithEndpointSubject("bench.echo.sized")); err != nil {
		return nil, nil, err
	}
	if pair {
		if err = addPairEcho(nc, echo, dev); err != nil {
			return nil, nil, err
		}
	}
	if err = echoConn.Flush(); err != nil {
		return nil, nil, err
	}
	return echoConn.Close, sized, nil
}

// echoDevice is the device id the same-size pair's echo answers for.
const echoDevice = "echo-gpu0"

// addPairEcho takes the replies of one allocate and deallocate on dev and
// adds echo endpoints that answer echoDevice's with them.
func addPairEcho(nc *nats.Conn, echo micro.Service, dev string) error {
	var id string
	for _, op := range []subjects.Op{subjects.Allocate, subjects.Deallocate} {
		var data any = subjects.AllocateRequest{SizeBytes: 1 << 20}
		if op == subjects.Deallocate {
			data = subjects.DeallocateRequest{AllocationID: id}
		}
		body, err := subjects.NewRequest("", op, data)
		if err != nil {
			return err
		}
		msg, err := nc.Request(subjects.Request(op, dev), body, 5*time.Second)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", op, dev, err)
		}
		var a subjects.Allocation
		out := any(&a)
		if op == subjects.Deallocate {
			out = nil
		}
		if _, err := subjects.DecodeReply(msg.Data, out); err != nil {
			return fmt.Errorf("%s on %s: %w", op, dev, err)
		}
		id = a.AllocationID
		reply := msg.Data
		if err := echo.AddEndpoint("pair-"+string(op), micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(reply) }),
			micro.WithEndpointSubject(subjects.Request(op, echoDevice))); err != nil {
			return err
		}
	}
	return nil
}

func allocFree(nc *nats.Conn, dev string) error {
	cl := client.New(nc)
	var a subjects.Allocation
	if _, err := cl.Do(context.Background(), subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 1 << 20}, &a); err != nil {
		return err
	}
	_, err := cl.Do(context.Background(), subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	return err
}

type result struct {
	perSecond float64
	p50, p99  time.Duration
	// cpu is the process's CPU time (clients, server and worker alike) per
	// call.
	cpu time.Duration
	// vsEcho and p50VsEcho are the ratios to echo in the same round.
	vsEcho, p50VsEcho float64
}

// against says b's throughput and p50 against a's of the same round: the
// medians over the rounds, and with four rounds or more the middle half of
// the rounds' ratios (how far one round's ratio can be trusted).
func against(a, b []result) string {
	rs := make([]result, min(len(a), len(b)))
	for i := range rs {
		rs[i] = result{vsEcho: b[i].perSecond / a[i].perSecond, p50VsEcho: float64(b[i].p50) / float64(a[i].p50)}
	}
	m := median(rs)
	s := fmt.Sprintf("%.2fx the req/s, p50 %.2fx", m.vsEcho, m.p50VsEcho)
	if len(rs) >= 4 {
		q1, q3 := quartiles(rs, func(r result) float64 { return r.vsEcho })
		p1, p3 := quartiles(rs, func(r result) float64 { return r.p50VsEcho })
		s += fmt.Sprintf(" (middle half of %d rounds: %.2f-%.2f, p50 %.2f-%.2f)", len(rs), q1, q3, p1, p3)
	}
	return s
}

// quartiles are the first and third quartiles of f over rs (the nearest
// ranks).
func quartiles(rs []result, f func(result) float64) (q1, q3 float64) {
	vs := sorted(rs, f)
	return vs[len(vs)/4], vs[(3*len(vs)-1)/4]
}

// sorted is f of each of rs, in order.
func sorted(rs []result, f func(result) float64) []float64 {
	vs := make([]float64, len(rs))
	for i, r := range rs {
		vs[i] = f(r)
	}
	slices.Sort(vs)
	return vs
}

// median takes the median of each figure of rs on its own.
func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		vs := sorted(rs, f)
		return vs[len(vs)/2]
	}
	return result{
		perSecond: pick(func(r result) float64 { return r.perSecond }),
		p50:       time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:       time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		cpu:       time.Duration(pick(func(r result) float64 { return float64(r.cpu) })),
		vsEcho:    pick(func(r result) float64 { return r.vsEcho }),
		p50VsEcho: pick(func(r result) float64 { return r.p50VsEcho }),
	}
}

// drive runs op from n goroutines for d and measures each call; the first
// error stops it.
func drive(nc *nats.Conn, n int, d time.Duration, op func(*nats.Conn) error) (result, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var failed error
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start, cpu0 := time.Now(), cpuTime()
	for range n {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := op(nc); err != nil {
					mu.Lock()
					failed = cmp.Or(failed, err)
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	if failed != nil {
		return result{}, failed
	}
	if len(lat) == 0 {
		return result{}, fmt.Errorf("no call ended within %v", d)
	}
	slices.Sort(lat)
	return result{
		cpu:       (cpu / time.Duration(len(lat))).Round(10 * time.Nanosecond),
		perSecond: float64(len(lat)) / elapsed.Seconds(),
		p50:       lat[len(lat)/2].Round(time.Microsecond),
		p99:       lat[len(lat)*99/100].Round(time.Microsecond),
	}, nil
}

// startServer starts an embedded NATS server on a free loopback port.
func startServer() (*server.Server, error) {
	return startServerOpts(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
}

func startServerOpts(opts *server.Options) (*server.Server, error) {
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	srv.Start()
	if !srv.ReadyForConnections(5 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded server not ready")
	}
	return srv, nil
}

// opener opens a worker's backend and says how to close it once the
// worker has stopped.
type opener func() (worker.Backend, func(), error)

// simHost opens a sim host of devices devices of bytes each.
func simHost(devices int, bytes int64) opener {
	return func() (worker.Backend, func(), error) {
		return sim.New(sim.Default(devices, bytes)), func() {}, nil
	}
}

// startWorkers runs nodes workers (<prefix>0, <prefix>1, ...) on url, each
// on a backend open gives it.
func startWorkers(ctx context.Context, url, prefix string, nodes int, open opener, sample time.Duration, readHandlers int) (func(), error) {
	return startWorkersOn(ctx, []string{url}, prefix, nodes, open, sample, readHandlers, false)
}

// startWorkersOn is startWorkers with the workers spread over the servers
// at urls, in turn.
// With jetStream the workers keep their events in a stream and hold their
// nodes' leases, as they do by default.
func startWorkersOn(ctx context.Context, urls []string, prefix string, nodes int, open opener, sample time.Duration, readHandlers int, jetStream bool) (func(), error) {
	var wg sync.WaitGroup
	var conns []*nats.Conn
	var closers []func()
	stop := func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
		for _, c := range closers {
			c()
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (func(), error) {
		cancel()
		stop()
		return nil, err
	}
	for i := 0; i < nodes; i++ {
		cfg := worker.DefaultConfig()
		cfg.Node = fmt.Sprintf("%s%d", prefix, i)
		b, closeBackend, err := open()
		if err != nil {
			return fail(err)
		}
		closers = append(closers, closeBackend)
		cfg.Backend = b
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.SampleInterval = sample
		if readHandlers != 0 {
			cfg.ReadHandlers = readHandlers
		}
		cfg.EventsJetStream = jetStream
		w, err := worker.New(ctx, cfg)
		if err != nil {
			return fail(err)
		}
		nc, err := nats.Connect(urls[i%len(urls)])
		if err != nil {
			return fail(err)
		}
		conns = append(conns, nc)
		failed := make(chan error, 1)
		wg.Go(func() { failed <- w.Run(ctx, nc) })
		select {
		case <-w.Ready():
		case err := <-failed:
			return fail(fmt.Errorf("worker %s: %v", cfg.Node, err))
		}
	}
	return func() { cancel(); stop() }, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func cpuName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			_, name, _ := strings.Cut(line, ":")
			return strings.TrimSpace(name)
		}
	}
	return "unknown CPU"
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
