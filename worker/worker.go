package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/node"
	"github.com/memworker/memworker/worker/pinned"
	"github.com/memworker/memworker/worker/proctree"
	"github.com/memworker/memworker/worker/replay"
	"github.com/memworker/memworker/worker/transfer"
)

// ServiceName is the micro service name every worker registers, so
// `nats micro ls|info|stats memory` find them all.
const ServiceName = "memory"

// ErrNodeTaken is returned by Run when another worker already serves the
// node and this one is not a standby.
var ErrNodeTaken = node.ErrNodeTaken

// InstanceBucket is the JetStream key-value bucket that keeps, per node,
// the instance serving it.
const InstanceBucket = node.InstanceBucket

// Worker serves one host's devices. Build it with New, serve with Run.
type Worker struct {
	cfg       Config
	log       *slog.Logger
	gpus      []*gpu
	transfers *transfer.Manager
	events    chan events.Pressure
	// allocEvents are allocation events (a lease expired, a reservation
	// exceeded) waiting for the publisher.
	allocEvents chan allocationEvent
	metrics     *metrics
	// maxPayload is the server's limit on a message, set by Run before
	// any handler runs.
	maxPayload int64
	ready      chan struct{}
	// drops logs the requests dropped without a reply, sampled.
	drops sampledLog
	// pinned is the host's page-locked memory, shared by the devices.
	pinned *pinned.Pool
	// pinnedWire is the pool's last figures on the wire (pinnedPool).
	pinnedWire atomic.Pointer[pinnedWire]
	// wake tells the admission loop of a deadline earlier than the one
	// its timer is set for (wakeAt, Unix nanoseconds).
	wake   chan struct{}
	wakeAt atomic.Int64
	// aheadWake tells pinAhead that a device's bytes to pin ahead changed.
	aheadWake chan struct{}
	// handlers serve each operation.
	handlers map[subjects.Op]opFunc
	// nc is the connection Run serves on (handoff asks go out on it);
	// asks are the handoff asks in flight, waited for at the stop.
	nc   atomic.Pointer[nats.Conn]
	asks sync.WaitGroup
	// askCtx ends the asks in flight at the stop.
	askCtx    context.Context
	cancelAsk context.CancelFunc
	// gate closes every device's door while the node's lease is not
	// confirmed.
	gate leaseGate
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
	w := &Worker{cfg: cfg, log: log, gate: leaseGate{node: cfg.Node},
		events: make(chan events.Pressure, eventQueueLen), allocEvents: make(chan allocationEvent, eventQueueLen), ready: make(chan struct{}),
		drops: sampledLog{interval: time.Minute}, wake: make(chan struct{}, 1), aheadWake: make(chan struct{}, 1)}
	w.transfers = transfer.New(transfer.Config{Backend: cfg.Backend, Retention: cfg.TransferRetention, HistoryBytes: cfg.TransferHistoryBytes,
		Code: func(err error) (subjects.Code, string) { we := wireError(err); return we.Code, we.Message },
		Done: w.transferDone, DoorChanged: w.gate.Changed, DoorRetry: transferDoorRetry, Log: log})
	w.handlers = w.ops()
	for _, op := range subjects.Ops() {
		if w.handlers[op] == nil {
			return nil, fmt.Errorf("operation %s has no handler", op)
		}
	}
	if w.pinned, err = w.newPinnedPool(ctx); err != nil {
		return nil, err
	}
	for _, info := range infos {
		w.gpus = append(w.gpus, &gpu{
			Device: ledger.New(ledger.Config{
				ID: subjects.DeviceID(cfg.Node, info.Index), Node: cfg.Node, Info: info, Backend: cfg.Backend, Gate: &w.gate,
				Thresholds: cfg.Thresholds, IdleAfter: cfg.IdleAfter,
				TruthMaxAge: cfg.TruthMaxAge, TelemetryMaxAge: cfg.TelemetryMaxAge,
				MaxAllocations: cfg.MaxAllocations, Quotas: cfg.Quotas, Pinned: w.pinned,
				MapPiece: cfg.MapPiece, StarvationGuard: cfg.StarvationGuard, MaxWaiters: cfg.MaxWaiters, AutoRelease: cfg.AutoRelease,
				ReturnCache: cfg.CacheHold >= 0, CacheHold: cfg.CacheHold, CacheKeep: cfg.CacheKeep,
				ReclaimTimeout: cfg.ReclaimTimeout, ExpiryBatch: cfg.ExpiryInterval, Start: time.Now(), ParentOf: proctree.Parent,
			}),
			replays: replay.New(cfg.IdempotencyWindow, cfg.IdempotencyEntries, cfg.IdempotencyBytes),
			waiting: map[ledger.Ticket]*pending{},
			kept:    keptCaches(),
			recent:  newRecent(),
			truth:   newTruthReader(),
		})
	}
	w.metrics = newMetrics(cfg.Metrics, w)
	return w, nil
}

// DeviceIDs lists the ids of the devices the worker serves.
func (w *Worker) DeviceIDs() []string {
	ids := make([]string, len(w.gpus))
	for i, g := range w.gpus {
		ids[i] = g.ID()
	}
	return ids
}

// Ready is closed once every endpoint is subscribed.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Run registers the micro service and its endpoints on nc and serves until
// ctx is done. Then it stops in order: the endpoints stop taking requests
// and every request already received is answered (with a context of its
// own, not the cancelled ctx); then the loops stop (sampler, expiry, and the
// transfer runners once every queued transfer has run); then the event pump
// publishes what is queued; then the stop is announced and nc drained. Once
// Run returns no handler runs any more, so the backend can be closed.
func (w *Worker) Run(ctx context.Context, nc *nats.Conn) (err error) {
	// Losing the node's lease stops the worker as a cancelled ctx does;
	// Run then returns node.ErrLeaseLost.
	ctx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	pub, err := events.NewPublisher(ctx, nc, events.Options{
		Binary: w.cfg.EventsBinary, JetStream: w.cfg.EventsJetStream, Replicas: w.cfg.EventReplicas, MaxBytes: w.cfg.EventStreamMaxBytes,
		Logf: func(format string, args ...any) { w.log.Warn(fmt.Sprintf(format, args...)) },
	})
	switch {
	case errors.Is(err, events.ErrNoJetStream):
		w.log.Warn("pressure events go to core NATS only", "reason", err)
	case err != nil:
		return err
	case pub.JetStream():
		sc := pub.StreamConfig()
		w.log.Info("events are kept in JetStream", "stream", events.StreamName, "replicas", sc.Replicas,
			"max_bytes", sc.MaxBytes, "max_age", sc.MaxAge, "max_per_subject", sc.MaxMsgsPerSubject)
	}
	guard := &node.Node{Name: w.cfg.Node, Standby: w.cfg.Standby, Service: ServiceName, DiscoveryWait: w.cfg.DiscoveryWait,
		JetStream: w.cfg.EventsJetStream, Log: w.log}
	if err := guard.Check(ctx, nc); err != nil {
		return err
	}
	var lease *node.Lease
	if pub.JetStream() {
		if lease, err = guard.Take(ctx, nc); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while standing by
			}
			return err
		}
	}
	if lease != nil {
		w.gate.lease.Store(lease)
	}
	if lease == nil && w.cfg.Standby {
		return errors.New("a standby needs JetStream: it waits on the node's lease to learn when the active worker is gone (two workers serving one node would split its ledger)")
	}
	if lease != nil {
		defer func() {
			if cause := context.Cause(ctx); errors.Is(cause, node.ErrLeaseLost) {
				err = cause
			}
		}()
	}
	w.maxPayload = nc.MaxPayload()
	w.nc.Store(nc)
	w.askCtx, w.cancelAsk = context.WithCancel(context.WithoutCancel(ctx))
	defer w.cancelAsk()

	// Requests, transfers and events outlive ctx: what was received before
	// the stop is done in full during the drain.
	serveCtx := context.WithoutCancel(ctx)
	loopCtx, stopLoops := context.WithCancel(serveCtx)
	defer stopLoops()
	// Transfers still running drainTimeout after the stop are cancelled.
	jobCtx, cancelJobs := context.WithCancel(serveCtx)
	defer cancelJobs()
	stopTransfers, stopPump := make(chan struct{}), make(chan struct{})
	var loops, pump sync.WaitGroup
	loops.Go(func() { w.transfers.Run(jobCtx, stopTransfers) })
	loops.Go(func() { w.runAdmission(stopTransfers) })
	if _, ok := truthReaderCycle(w.cfg.TruthMaxAge); ok {
		for _, g := range w.gpus {
			loops.Go(func() { w.keepTruth(loopCtx, g) })
		}
	}
	// The lease is kept from here on: serving, registering and announcing
	// may wait on a slow JetStream for longer than the key lives.
	var self atomic.Pointer[string] // the service's instance id, once registered
	if lease != nil {
		loops.Go(func() {
			lease.Keep(loopCtx, node.Watch{
				Lost: func(err error) {
					w.log.Error("stopping: another worker took the node", "node", w.cfg.Node, "err", err)
					w.gate.changed() // closed for good
					lose(err)
				},
				Unconfirmed: func(err error) {
					w.log.Warn("granting no memory until the node's lease is renewed; frees and reads go on", "node", w.cfg.Node, "err", err)
					w.metrics.paused.Set(1)
				},
				Confirmed: func() {
					w.log.Info("the node's lease is renewed: granting memory again", "node", w.cfg.Node)
					w.metrics.paused.Set(0)
					w.gate.changed()
					loops.Go(w.readmit) // not on the lease's goroutine: a device's lock may be held for long
				},
				Rival: func(ctx context.Context) string {
					if id := self.Load(); id != nil {
						return guard.Rival(ctx, nc, *id)
					}
					return ""
				},
				Retaken: guard.Served,
			})
		})
	}

	releaseInstance := func() {}
	subsBefore := nc.NumSubscriptions()
	svc, err := w.addService(serveCtx, nc)
	// The service's own subscriptions, counted before anything else (the
	// event pump's JetStream ack inbox) subscribes.
	serviceSubs := nc.NumSubscriptions() - subsBefore
	// The startup events go out before the worker says it is ready, so a
	// subscriber that waits for ready sees them first.
	w.publishQueued(pub)
	pump.Go(func() { w.publish(pub, stopPump) })
	// Stopping, also when the service did not come up whole.
	defer func() {
		w.closeIfGone(nc)
		w.stopService(svc, nc, serviceSubs)
		if lease != nil {
			lease.Release()  // a standby takes over now
			w.gate.changed() // closed for good: a transfer waiting at the door hears it
		}
		close(stopTransfers)
		stopLoops()
		deadline := time.AfterFunc(drainTimeout, cancelJobs)
		loops.Wait()
		deadline.Stop()
		// No transfer runs any more: the page-locked memory no allocation
		// holds goes back to the host.
		if perr := w.pinned.Close(context.Background()); perr != nil {
			w.log.Warn("giving back pinned host memory", "err", perr)
		}
		w.cancelAsk()
		w.asks.Wait()
		w.closeIfGone(nc)
		close(stopPump)
		pump.Wait()
		acked, cancel := context.WithTimeout(context.Background(), eventTimeout)
		pub.Close(acked)
		cancel()
		if svc != nil {
			guard.Announce(pub, events.TypeWorkerStopped, svc.Info().ID, "", w.DeviceIDs())
			releaseInstance()
		}
		w.drain(nc)
		w.log.Info("stopped", "node", w.cfg.Node)
	}()
	if err != nil {
		return err
	}
	id := svc.Info().ID
	self.Store(&id)
	w.log.Info("serving", "service", ServiceName, "node", w.cfg.Node, "backend", w.cfg.Backend.Name(),
		"devices", w.DeviceIDs(), "ops", len(subjects.Ops()))
	gone, release := guard.Register(ctx, nc, svc.Info().ID)
	releaseInstance = release
	guard.Announce(pub, events.TypeWorkerStarted, svc.Info().ID, gone, w.DeviceIDs())
	close(w.ready)

	loops.Go(func() { w.every(loopCtx, w.cfg.SampleInterval, w.sample) })
	if w.cfg.PinnedAhead {
		loops.Go(func() { w.pinAhead(loopCtx) })
	}
	<-ctx.Done()
	w.log.Info("stopping: answering the requests received", "node", w.cfg.Node)
	return nil
}

// readmit examines every device's waiters and holders again: the gate
// opened.
func (w *Worker) readmit() {
	for _, g := range w.gpus {
		g.mu.Lock()
		w.recheck(g)
		g.mu.Unlock()
	}
}

// addService registers the micro service with an endpoint per operation and
// device, and the fleet endpoints. Handlers act with ctx. The service is
// returned also with an error when it was registered, so it can be stopped.
func (w *Worker) addService(ctx context.Context, nc *nats.Conn) (micro.Service, error) {
	host, _ := os.Hostname()
	svc, err := micro.AddService(nc, micro.Config{
		// A flood beyond an endpoint's pending limits drops messages, not
		// the subscription: say so once per burst instead of silently.
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			w.log.Warn("NATS subscription error", "subject", e.Subject, "err", e.Description)
		},
		Name:        ServiceName,
		Version:     w.cfg.Version,
		Description: "GPU memory coordination for node " + w.cfg.Node,
		Metadata: map[string]string{"node": w.cfg.Node, "backend": w.cfg.Backend.Name(),
			"host": host, "standby": strconv.FormatBool(w.cfg.Standby)},
	})
	if err != nil {
		return nil, fmt.Errorf("registering micro service: %w", err)
	}
	// Each device's level is announced (queued for the publisher) before
	// the first request can change it, so the startup event tells the
	// level the worker found.
	for _, g := range w.gpus {
		w.sample(g, time.Now().UTC())
	}
	ops := w.handlers
	for _, g := range w.gpus {
		for _, op := range subjects.Ops() {
			fn := ops[op]
			// micro runs one request at a time per endpoint; a read runs
			// on several, in the device's queue group, so a burst of
			// reads is decoded, encoded and answered in parallel.
			handlers := 1
			if !op.Mutating() {
				handlers = w.cfg.ReadHandlers
			}
			for k := 1; k <= handlers; k++ {
				name, meta := string(op)+"-"+g.ID(), map[string]string{"op": string(op), "device_id": g.ID(),
					"request_schema": subjects.SchemaRef(op.RequestSchema()), "reply_schema": subjects.SchemaRef(op.ReplySchema())}
				if k > 1 {
					name, meta["handler"] = fmt.Sprintf("%s-%d", name, k), strconv.Itoa(k)
				}
				err := svc.AddEndpoint(name, w.handler(ctx, op, g, fn),
					micro.WithEndpointSubject(subjects.Request(op, g.ID())),
					micro.WithEndpointQueueGroup(subjects.QueueGroup(g.ID())),
					micro.WithEndpointMetadata(meta),
					micro.WithEndpointPendingLimits(cmp.Or(w.cfg.PendingRequests, pendingMsgs), w.pendingBytes()))
				if err != nil {
					return svc, fmt.Errorf("adding endpoint %s for %s: %w", op, g.ID(), err)
				}
			}
		}
	}
	for _, op := range subjects.FleetOps() {
		err := svc.AddEndpoint(string(op)+"-"+subjects.Fleet, w.fleetHandler(ctx, op, ops[op], svc.Info().ID),
			micro.WithEndpointSubject(subjects.FleetRequest(op)),
			micro.WithEndpointQueueGroup(subjects.NodeQueueGroup(w.cfg.Node)),
			micro.WithEndpointMetadata(map[string]string{"op": string(op), "device_id": subjects.Fleet, "node": w.cfg.Node,
				"request_schema": subjects.SchemaRef(op.RequestSchema()), "reply_schema": subjects.SchemaRef(op.FleetReplySchema())}))
		if err != nil {
			return svc, fmt.Errorf("adding fleet endpoint %s: %w", op, err)
		}
	}
	if err := nc.Flush(); err != nil {
		return svc, fmt.Errorf("subscribing: %w", err)
	}
	return svc, nil
}

// Pending limits of an endpoint's subscription: what the server delivered
// and the endpoint has not handled yet. Past them the client library drops
// requests unanswered (a slow consumer), so they hold a burst of the
// largest requests the server carries: pendingMsgs requests, and
// pendingPayloads of them at the server's max payload.
const (
	pendingMsgs     = 1 << 20
	pendingPayloads = 1024
)

func (w *Worker) pendingBytes() int {
	return int(min(max(w.maxPayload, 1<<20)*pendingPayloads, 4<<30))
}

// stopService stops svc's endpoints and waits, at most drainTimeout, until
// each of its subs subscriptions has answered every request it received: a
// drained subscription leaves the connection once its last handler has
// returned.
func (w *Worker) stopService(svc micro.Service, nc *nats.Conn, subs int) {
	if svc == nil {
		return
	}
	left := nc.NumSubscriptions() - subs
	if err := svc.Stop(); err != nil {
		w.log.Warn("stopping micro service", "err", err)
		return
	}
	deadline := time.Now().Add(drainTimeout)
	for nc.NumSubscriptions() > left && !w.closeIfGone(nc) {
		if time.Now().After(deadline) {
			w.log.Warn("requests still being answered; stopping anyway", "after", drainTimeout)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeIfGone closes nc when its server is gone: not connected, and not
// back within reconnectGrace (a server restart or a cluster failover
// reconnects within it, and the stop's replies and events then go out).
// Closed, no reply, drain or event of the stop waits out its timeout for
// nothing (a stop took 14 s). It reports whether nc is closed.
func (w *Worker) closeIfGone(nc *nats.Conn) bool {
	for deadline := time.Now().Add(reconnectGrace); ; time.Sleep(20 * time.Millisecond) {
		if nc.IsClosed() {
			return true
		}
		if nc.IsConnected() || nc.IsDraining() {
			return false
		}
		if time.Now().After(deadline) {
			break
		}
	}
	w.log.Warn("the NATS server is gone: stopping without answering, draining or the stop event", "status", nc.Status().String(),
		"waited", reconnectGrace)
	nc.Close()
	return true
}

// reconnectGrace is how long a stopping worker waits for its connection to
// come back before it stops without it.
const reconnectGrace = 2 * time.Second

// every calls f for each device at each tick of interval until ctx is done.
func (w *Worker) every(ctx context.Context, interval time.Duration, f func(*gpu, time.Time)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, g := range w.gpus {
				f(g, now.UTC())
			}
		}
	}
}

// Check reports whether the worker can serve: its endpoints are up and
// every device answers.
func (w *Worker) Check(ctx context.Context) error {
	select {
	case <-w.ready:
	default:
		return errors.New("not serving yet")
	}
	for _, g := range w.gpus {
		if _, err := w.cfg.Backend.MemInfo(ctx, g.Index()); err != nil {
			return fmt.Errorf("%s: %w", g.ID(), err)
		}
	}
	return nil
}

// drainTimeout bounds how long Run waits for requests already received.
const drainTimeout = 10 * time.Second

// drain drains nc and waits for it to close.
func (w *Worker) drain(nc *nats.Conn) {
	closed := nc.StatusChanged(nats.CLOSED)
	if err := nc.Drain(); err != nil {
		if !errors.Is(err, nats.ErrConnectionClosed) {
			w.log.Warn("draining NATS connection", "err", err)
		}
		return
	}
	select {
	case <-closed:
	case <-time.After(drainTimeout):
		w.log.Warn("drain timed out; closing", "after", drainTimeout)
		nc.Close()
	}
}
