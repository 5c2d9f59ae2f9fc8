package integration

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device"
)

// TestFreedMemoryGoesBackToTheGPU: what the worker's clients free stays
// cached for --cache-hold, then goes back to the device for any process to
// have (all of it with --cache-keep 0); with the hold off it stays cached.
func TestFreedMemoryGoesBackToTheGPU(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	for _, tc := range []struct {
		name string
		hold time.Duration
		back bool
	}{
		{"held 1 s", time.Second, true},
		{"at once", 0, true},
		{"kept (hold off)", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
				c.CacheHold, c.CacheKeep = tc.hold, 0
				c.SampleInterval = time.Minute // only the hold returns memory
			}))
			nc := connect(t, srv)
			dev := "n1-gpu0"
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 256 * MiB}, &a)
			call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
			if tc.hold > 0 {
				if held := heldBytes(h.dev, 0, device.VRAM); held < 256*MiB {
					t.Errorf("right after the free the worker holds %d MiB: the cache should be kept for the hold", held/MiB)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for heldBytes(h.dev, 0, device.VRAM) != 0 && tc.back && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			held := heldBytes(h.dev, 0, device.VRAM)
			if tc.back && held != 0 {
				t.Errorf("the worker still holds %d MiB of freed memory", held/MiB)
			}
			if !tc.back {
				time.Sleep(300 * time.Millisecond)
				if held = heldBytes(h.dev, 0, device.VRAM); held < 256*MiB {
					t.Errorf("with the hold off the cache went back (%d MiB held)", held/MiB)
				}
			}
			var u subjects.Usage
			call(t, nc, subjects.GetUsage, dev, nil, &u)
			if tc.back && u.CachedBytes != 0 {
				t.Errorf("usage says %d MiB cached", u.CachedBytes/MiB)
			}
		})
	}
}

// TestAWorkerStopsAtOnceWhenItsServerIsGone: with the NATS server gone,
// the stop does not wait on events nobody can receive (it took 14 s).
func TestAWorkerStopsAtOnceWhenItsServerIsGone(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	srv := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := startWorkerCtx(t, ctx, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 900 * MiB}, &a) // a pressure event queued
	srv.Shutdown()
	start := time.Now()
	cancel()
	select {
	case <-h.done:
		t.Logf("stopped %s after the cancel", time.Since(start).Round(time.Millisecond))
	case <-time.After(8 * time.Second): // the timeouts it waited out before added to 14 s
		t.Fatal("the worker still stops slowly without its server")
	}
}

// TestAStopDuringAReconnectStillAnswers: a worker stopped while its
// connection reconnects (the server restarted: a blip, not a server gone)
// waits for it to come back, and the waiter it holds gets its reply.
func TestAStopDuringAReconnectStillAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := func() *server.Options {
		return &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, ServerName: unobserved}
	}
	srv := serve(t, opts())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	wnc, err := nats.Connect(url, nats.ReconnectWait(300*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	h := startWorkerOn(t, ctx, wnc, "blip", withDevices(1, GiB))
	dev := h.DeviceIDs()[0]
	nc, err := nats.Connect(url, nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 800 * MiB}, nil)
	ch := pending(t, nc, subjects.Allocate, dev, waitBody(t, "w1", 800*MiB, 60, 0))
	deadline := time.Now().Add(5 * time.Second)
	for status(t, nc, dev).WaitingRequests == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the allocate never waited")
		}
		time.Sleep(10 * time.Millisecond)
	}

	srv.Shutdown() // the server restarts
	for wnc.Status() == nats.CONNECTED {
		time.Sleep(time.Millisecond)
	}
	cancel() // and the worker is stopped meanwhile (a rolling restart)
	serve(t, opts())

	select {
	case msg := <-ch:
		if r, _ := subjects.DecodeReply(msg.Data, nil); r.Success || r.ErrorCode != subjects.CodeDeviceUnavailable {
			t.Errorf("the waiter at the stop: %+v; want DEVICE_UNAVAILABLE", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the waiter got no reply after the server came back (worker connection %v)", wnc.Status())
	}
}
