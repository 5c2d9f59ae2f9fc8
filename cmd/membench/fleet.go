package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// fleet measures get_status.all gathered with request-many as the fleet
// grows to max workers of two sim devices each: on the bench's server, or
// on a cluster of servers (the workers spread over them, the client on
// the first). With memctl set it also times `memctl status --all`.
func fleet(url string, max, servers int, memctl string, out io.Writer) error {
	urls := []string{url}
	where := "one server"
	if servers > 1 {
		cluster, err := startCluster(servers)
		if err != nil {
			return err
		}
		defer func() {
			for _, s := range cluster {
				s.Shutdown()
			}
		}()
		urls = urls[:0]
		for _, s := range cluster {
			urls = append(urls, s.ClientURL())
		}
		where = fmt.Sprintf("a cluster of %d servers", servers)
	}
	t := table.NewWriter()
	t.SetOutputMirror(out)
	t.SetStyle(table.StyleLight)
	header := table.Row{"fleet nodes", "devices", "replies", "p50", "p99"}
	if memctl != "" {
		header = append(header, "memctl status --all p50")
	}
	t.AppendHeader(header)
	nc, err := nats.Connect(urls[0])
	if err != nil {
		return err
	}
	defer nc.Close()
	cl := client.New(nc)
	// The bench worker answers too when the fleet shares its server.
	extra := 0
	if servers <= 1 {
		extra = 1
	}
	for n := 1; ; n = min(n*2, max) {
		row, err := fleetRound(cl, urls, n, n+extra, memctl)
		if err != nil {
			return err
		}
		t.AppendRow(row)
		if n == max {
			break
		}
	}
	fmt.Fprintf(out, "\nFleet get_status.all on %s (workers of 2 sim devices; on one server the bench worker answers too):\n", where)
	t.Render()
	return nil
}

// fleetRound starts n workers and times 200 gatherings of expect replies.
func fleetRound(cl *client.Client, urls []string, n, expect int, memctl string) (table.Row, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop, err := startWorkersOn(ctx, urls, "fleet", n, simHost(2, 16<<30), time.Hour, 1, false)
	if err != nil {
		return nil, err
	}
	defer stop()
	// Across a cluster the workers' interest reaches the client's server a
	// moment after they start.
	for deadline := time.Now().Add(10 * time.Second); ; {
		res, err := fleetN(cl, expect)
		if err == nil && len(res.Nodes) == expect {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d nodes started, %d answer", n, len(res.Nodes))
		}
	}
	var lat []time.Duration
	replies := 0
	for range 200 {
		t0 := time.Now()
		res, err := fleetN(cl, expect)
		if err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
		replies = len(res.Nodes)
	}
	row := table.Row{n, 2 * n, replies, medianDuration(lat), lat[len(lat)*99/100].Round(time.Microsecond)}
	if memctl != "" {
		var ml []time.Duration
		for range 20 {
			t0 := time.Now()
			if b, err := exec.Command(memctl, "--server", cl.Conn().ConnectedUrl(), "status", "--all").CombinedOutput(); err != nil {
				return nil, fmt.Errorf("memctl status --all: %v: %s", err, b)
			}
			ml = append(ml, time.Since(t0))
		}
		row = append(row, medianDuration(ml))
	}
	return row, nil
}

func medianDuration(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2].Round(time.Microsecond)
}

func fleetN(cl *client.Client, expect int) (*client.FleetResult, error) {
	return cl.FleetExpect(context.Background(), subjects.GetStatus, nil, 100*time.Millisecond, expect)
}

// startCluster starts n embedded servers routed to the first.
func startCluster(n int) ([]*server.Server, error) {
	var out []*server.Server
	fail := func(err error) ([]*server.Server, error) {
		for _, s := range out {
			s.Shutdown()
		}
		return nil, err
	}
	for i := range n {
		opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, ServerName: fmt.Sprintf("bench-%d", i),
			Cluster: server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: -1}}
		if i > 0 {
			opts.Routes = server.RoutesFromStr("nats-route://" + out[0].ClusterAddr().String())
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return fail(err)
		}
		s.Start()
		out = append(out, s)
		if !s.ReadyForConnections(5 * time.Second) {
			return fail(fmt.Errorf("cluster server %d not ready", i))
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		routed := true
		for _, s := range out {
			routed = routed && s.NumRoutes() >= n-1
		}
		if routed {
			return out, nil
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the cluster's %d servers did not route to each other", n))
		}
	}
}

// monitorCost measures the process's CPU time with 8 sim devices sampled
// every second, against the same worker sampled hourly.
func monitorCost(d time.Duration, out io.Writer) error {
	measure := func(sample time.Duration) (float64, error) {
		return cpuWith(1, simHost(8, 16<<30), sample, d, false)
	}
	idle, err := measure(time.Hour)
	if err != nil {
		return err
	}
	busy, err := measure(time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nMonitor: 8 sim devices sampled every 1s: %.3f%% of one core; the same process sampling hourly: %.3f%%; monitor cost %.3f%%\n",
		busy, idle, busy-idle)
	return nil
}

// idleCost measures what n idle workers (two sim devices each, the
// default configuration) cost in CPU, against the server alone: without
// JetStream, and with it (events kept in a stream, each node's lease
// renewed every half second), as memworker runs by default.
func idleCost(n int, d time.Duration, out io.Writer) error {
	sample := worker.DefaultConfig().SampleInterval
	fmt.Fprintf(out, "\nIdle: %d sim workers (2 devices each, sampled every %v) on one server, %v each:\n", n, sample, d)
	for _, js := range []bool{false, true} {
		alone, err := cpuWith(0, simHost(2, 16<<30), sample, d, js)
		if err != nil {
			return err
		}
		all, err := cpuWith(n, simHost(2, 16<<30), sample, d, js)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  JetStream %-5v: %.3f%% of one core in all, the server alone %.3f%%: %.4f%% per worker\n",
			js, all, alone, (all-alone)/float64(n))
	}
	return nil
}

// cpuWith is the process's CPU use, in percent of one core, over d with
// nodes workers running on a server of its own.
func cpuWith(nodes int, open opener, sample, d time.Duration, jetStream bool) (float64, error) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true}
	if jetStream {
		dir, err := os.MkdirTemp("", "membench-js")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		opts.JetStream, opts.StoreDir = true, dir
	}
	srv, err := startServerOpts(opts)
	if err != nil {
		return 0, err
	}
	defer srv.Shutdown()
	if nodes > 0 {
		stop, err := startWorkersOn(context.Background(), []string{srv.ClientURL()}, "idle", nodes, open, sample, 1, jetStream)
		if err != nil {
			return 0, err
		}
		defer stop()
	}
	time.Sleep(time.Second)
	c0, t0 := cpuTime(), time.Now()
	time.Sleep(d)
	return (cpuTime() - c0).Seconds() / time.Since(t0).Seconds() * 100, nil
}
