package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/subjects"
)

// ServiceName is the micro service name every worker registers, so
// `nats micro ls|info|stats memory` find them all.
const ServiceName = "memory"

// Worker serves one host's devices. Build it with New, serve with Run.
type Worker struct {
	cfg   Config
	log   *slog.Logger
	gpus  []*gpu
	ready chan struct{}
}

// New discovers the backend's devices and prepares a worker for them.
func New(ctx context.Context, cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	infos, err := cfg.Backend.Devices(ctx)
	if err != nil {
		return nil, fmt.Errorf("discovering devices: %w", err)
	}
	if len(infos) == 0 {
		return nil, errors.New("the backend has no devices")
	}
	w := &Worker{cfg: cfg, log: log, ready: make(chan struct{})}
	for _, info := range infos {
		w.gpus = append(w.gpus, newGPU(&w.cfg, cfg.Node, info))
	}
	return w, nil
}

// DeviceIDs lists the ids of the devices the worker serves.
func (w *Worker) DeviceIDs() []string {
	ids := make([]string, len(w.gpus))
	for i, g := range w.gpus {
		ids[i] = g.id
	}
	return ids
}

// Ready is closed once every endpoint is subscribed.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// ops are the operations served so far, and their functions.
func (w *Worker) ops() map[subjects.Op]opFunc {
	return map[subjects.Op]opFunc{
		subjects.GetStatus:      typed(w.getStatus),
		subjects.GetUsage:       typed(w.getUsage),
		subjects.GetPressure:    typed(w.getPressure),
		subjects.GetAllocations: typed(w.getAllocations),
		subjects.Allocate:       typed(w.allocate),
		subjects.Deallocate:     typed(w.deallocate),
		subjects.Clear:          typed(w.clear),
	}
}

// Run registers the micro service and its endpoints on nc and serves until
// ctx is done; then it stops the service (draining its subscriptions) and
// waits for its background work. The caller owns nc and should then drain
// it, so requests already received are answered.
func (w *Worker) Run(ctx context.Context, nc *nats.Conn) error {
	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName,
		Version:     w.cfg.Version,
		Description: "GPU memory coordination for node " + w.cfg.Node,
		Metadata:    map[string]string{"node": w.cfg.Node, "backend": w.cfg.Backend.Name()},
	})
	if err != nil {
		return fmt.Errorf("registering micro service: %w", err)
	}
	defer func() {
		if err := svc.Stop(); err != nil {
			w.log.Warn("stopping micro service", "err", err)
		}
	}()
	ops := w.ops()
	for _, g := range w.gpus {
		for _, op := range subjects.Ops() {
			fn, ok := ops[op]
			if !ok {
				continue
			}
			err := svc.AddEndpoint(string(op)+"-"+g.id, w.handler(ctx, op, g, fn),
				micro.WithEndpointSubject(subjects.Request(op, g.id)),
				micro.WithEndpointQueueGroup(subjects.QueueGroup(g.id)),
				micro.WithEndpointMetadata(map[string]string{"op": string(op), "device_id": g.id}))
			if err != nil {
				return fmt.Errorf("adding endpoint %s for %s: %w", op, g.id, err)
			}
		}
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}
	w.log.Info("serving", "service", ServiceName, "node", w.cfg.Node, "backend", w.cfg.Backend.Name(),
		"devices", w.DeviceIDs(), "ops", len(ops))
	close(w.ready)

	var wg sync.WaitGroup
	wg.Go(func() { w.expireLoop(ctx) })
	<-ctx.Done()
	wg.Wait()
	return nil
}

// expireLoop frees allocations past their ttl until ctx is done.
func (w *Worker) expireLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, g := range w.gpus {
				w.expire(g, now)
			}
		}
	}
}
