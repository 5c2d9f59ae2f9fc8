package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestBenchReportsEveryCase runs the whole bench, briefly: every case and
// the fleet table come out with figures, and no request failed (a failed
// request aborts the run).
func TestBenchReportsEveryCase(t *testing.T) {
	var out strings.Builder
	c := &cli{Duration: 50 * time.Millisecond, Warmup: 100 * time.Millisecond, Rounds: 2, Concurrency: "1,4", FleetNodes: 2, Cases: "echo,sized,get_status,pair,allocate+deallocate", Backend: "sim", ReadHandlers: 1}
	if err := run(c, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"│ echo ", "│ echo, 1", "│ get_status ", "│ echo, allocate+deallocate replies ", "│ allocate+deallocate ",
		"against the same-size echo pair (medians of the rounds' ratios): 1 clients: ", "; 4 clients: ", "get_status against the same-size echo (medians of the rounds' ratios): 1 clients: ", "Fleet get_status.all", "device bench0-gpu0", "100ms warm-up, 2 rounds"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchTargetsARunningWorker: with --server the bench finds the
// worker's device by asking the fleet, and measures it there.
func TestBenchTargetsARunningWorker(t *testing.T) {
	srv, err := startServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	stop, err := startWorkers(context.Background(), srv.ClientURL(), "remote", 1, simHost(2, 1<<30), time.Hour, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var out strings.Builder
	c := &cli{Duration: 50 * time.Millisecond, Rounds: 1, Concurrency: "2", FleetNodes: 4, Monitor: time.Hour, Cases: "echo,get_status", Server: srv.ClientURL()}
	if err := run(c, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "device remote0-gpu") || !strings.Contains(out.String(), "│ get_status ") {
		t.Errorf("output:\n%s", out.String())
	}
	if strings.Contains(out.String(), "Fleet") {
		t.Errorf("the fleet case ran against a running server:\n%s", out.String())
	}
}

// TestBenchWithTheEchoElsewhere: one membench serves the echo endpoints
// (--echo serve) and another measures the worker against them (--echo
// elsewhere), the same-size echo and pair included.
func TestBenchWithTheEchoElsewhere(t *testing.T) {
	srv, err := startServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	stop, err := startWorkers(context.Background(), srv.ClientURL(), "remote", 1, simHost(1, 1<<30), time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var served strings.Builder
	serve := &cli{Echo: "serve", Server: srv.ClientURL(), Concurrency: "1", Rounds: 1, Cases: "echo", served: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- run(serve, &served) }()
	defer func() {
		close(serve.served)
		if err := <-done; err != nil {
			t.Errorf("--echo serve: %v", err)
		}
	}()
	var out strings.Builder
	c := &cli{Duration: 50 * time.Millisecond, Rounds: 1, Concurrency: "2", Cases: "echo,sized,get_status,pair,allocate+deallocate", Server: srv.ClientURL(), Echo: "elsewhere"}
	for deadline := time.Now().Add(10 * time.Second); ; {
		out.Reset()
		err := run(c, &out)
		if err == nil {
			break
		}
		if time.Now().After(deadline) { // the serving one not up yet: no responders
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"echo endpoints in another process", "│ echo, 1", "│ echo, allocate+deallocate replies ", "get_status against the same-size echo", "the server, worker and echo run elsewhere"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if err := run(&cli{Echo: "elsewhere", Concurrency: "1", Rounds: 1, Cases: "echo"}, &out); err == nil || !strings.Contains(err.Error(), "needs --server") {
		t.Errorf("--echo elsewhere without --server: %v", err)
	}
}

// TestFleetOnAClusterAndIdleCost: the fleet case on a cluster of servers
// gathers every worker's reply (its workers spread over the servers), and
// the idle case reports a cost per worker with and without JetStream.
func TestFleetOnAClusterAndIdleCost(t *testing.T) {
	var out strings.Builder
	c := &cli{Duration: 20 * time.Millisecond, Rounds: 1, Concurrency: "1", FleetNodes: 3, Cluster: 3, Cases: "echo", Backend: "sim", ReadHandlers: 1,
		IdleWorkers: 2, IdleFor: 50 * time.Millisecond}
	if err := run(c, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"on a cluster of 3 servers", "│           3 │       6 │       3 │", "JetStream false:", "JetStream true :", "per worker"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestAgainst: a comparison is the median of the rounds' own ratios, and
// with four rounds or more it says the middle half of them.
func TestAgainst(t *testing.T) {
	echo := func(perSecond float64, p50 time.Duration) result { return result{perSecond: perSecond, p50: p50} }
	for _, tc := range []struct {
		name string
		a, b []result
		want string
	}{
		{"one round", []result{echo(100, 10)}, []result{echo(90, 11)}, "0.90x the req/s, p50 1.10x"},
		{"a round's own ratio, not the ratio of medians",
			[]result{echo(100, 10), echo(200, 10), echo(50, 10)}, []result{echo(95, 10), echo(100, 10), echo(50, 10)},
			"0.95x the req/s, p50 1.00x"},
		{"four rounds: the middle half",
			[]result{echo(100, 10), echo(100, 10), echo(100, 10), echo(100, 10)}, []result{echo(70, 13), echo(90, 11), echo(80, 12), echo(100, 10)},
			"0.90x the req/s, p50 1.20x (middle half of 4 rounds: 0.80-0.90, p50 1.10-1.20)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := against(tc.a, tc.b); got != tc.want {
				t.Errorf("against = %q, want %q", got, tc.want)
			}
		})
	}
}
