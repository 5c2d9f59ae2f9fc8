package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/sim"
)

// Allocate memory on a device, see it in the device's usage, free it. The
// example runs its own server and a worker on a simulated 16 GiB device;
// against a real deployment only the connection differs.
func Example() {
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	srv.Start()
	defer srv.Shutdown()
	srv.ReadyForConnections(5e9)
	stop := runWorker(srv.ClientURL(), "example")
	defer stop()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	c := client.New(nc)
	ctx := context.Background()

	var a subjects.Allocation
	if _, err := c.Do(ctx, subjects.Allocate, "example-gpu0", subjects.AllocateRequest{SizeBytes: 1 << 30, Purpose: "kv_cache"}, &a); err != nil {
		panic(err)
	}
	var u subjects.Usage
	if _, err := c.Do(ctx, subjects.GetUsage, "example-gpu0", nil, &u); err != nil {
		panic(err)
	}
	fmt.Println("allocated:", u.AllocatedBytes, "of", u.TotalBytes)

	_, err = c.Do(ctx, subjects.Deallocate, "example-gpu0", subjects.DeallocateRequest{AllocationID: "no-such-id"}, nil)
	fmt.Println(err)
	if _, err := c.Do(ctx, subjects.Deallocate, "example-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil); err != nil {
		panic(err)
	}
	// Output:
	// allocated: 1073741824 of 17179869184
	// ALLOCATION_NOT_FOUND: allocation no-such-id on example-gpu0: allocation not found
}

// runWorker serves a sim worker for node at url until stop is called.
func runWorker(url, node string) (stop func()) {
	cfg := worker.DefaultConfig()
	cfg.Node, cfg.Backend = node, sim.New(sim.Default(1, 16<<30))
	cfg.DiscoveryWait, cfg.EventsJetStream = 1, false
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := worker.New(context.Background(), cfg)
	if err != nil {
		panic(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx, nc) }()
	<-w.Ready()
	return func() { cancel(); <-done }
}
