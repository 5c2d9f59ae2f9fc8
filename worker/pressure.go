package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

// eventQueueLen bounds the events waiting for the publisher; beyond it new
// events are dropped (and logged) rather than blocking a device.
const eventQueueLen = 1024

// topConsumers is how many consumers an event names.
const topConsumers = 5

// observe feeds device truth to g's pressure tracker and announces a level
// change. Every path that observes goes through here, so get_pressure never
// reports a level no event announced. The caller holds g.mu.
func (w *Worker) observe(g *gpu, u subjects.Usage) subjects.Pressure {
	first := g.lastEvent.IsZero()
	p, changed := g.Observe(u)
	if changed {
		reason := events.ReasonChanged
		if first {
			reason = events.ReasonStartup
		}
		w.announce(g, u, p, reason)
	}
	w.wantAhead(g, u, p, changed)
	return p
}

// announce queues a pressure event for the publisher. The caller holds g.mu.
func (w *Worker) announce(g *gpu, u subjects.Usage, p subjects.Pressure, reason string) {
	g.lastEvent = u.SampledAt
	defer func() { g.released = 0 }()
	data := events.Pressure{
		PressureFigures: p.PressureFigures,
		Node:            w.cfg.Node,
		Reason:          reason,
		ReleasedBytes:   g.released,
		TopConsumers:    g.Consumers(u, topConsumers),
		ObservedAt:      u.SampledAt,
	}
	select {
	case w.events <- data:
	default:
		w.log.Warn("pressure event dropped: the publisher is behind", "device", g.ID(), "level", p.Level)
	}
}

// allocationEvent is an allocation event waiting for the publisher.
type allocationEvent struct {
	typ  string
	data events.Allocation
}

// announceAllocation queues an allocation event for the publisher. An
// allocation event tells a client its memory is gone: it is never dropped.
// When the publisher is behind, the device waits for it (back-pressure,
// counted in memworker_event_waits_total).
func (w *Worker) announceAllocation(typ string, data events.Allocation) {
	if len(data.AllocationIDs) == 0 {
		data.AllocationIDs = []string{data.AllocationID}
	}
	select {
	case w.allocEvents <- allocationEvent{typ, data}:
	default:
		w.metrics.eventWaits.Inc()
		w.allocEvents <- allocationEvent{typ, data}
	}
}

// publish sends queued events until stop is closed, and then those still
// queued. Every second it lets the publisher look for a lost stream.
func (w *Worker) publish(pub *events.Publisher, stop <-chan struct{}) {
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-check.C:
			pub.Check(context.Background())
		case data := <-w.events:
			w.publishOne(pub, data)
		case e := <-w.allocEvents:
			w.publishAllocation(pub, e)
		case <-stop:
			for {
				select {
				case data := <-w.events:
					w.publishOne(pub, data)
				case e := <-w.allocEvents:
					w.publishAllocation(pub, e)
				default:
					return
				}
			}
		}
	}
}

// publishQueued publishes the pressure events queued so far.
func (w *Worker) publishQueued(pub *events.Publisher) {
	for {
		select {
		case data := <-w.events:
			w.publishOne(pub, data)
		default:
			return
		}
	}
}

func (w *Worker) publishAllocation(pub *events.Publisher, e allocationEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	w.metrics.events.WithLabelValues(e.typ).Inc()
	if err := pub.PublishAllocation(ctx, e.typ, e.data); err != nil {
		w.log.Warn("publishing allocation event", "device", e.data.DeviceID, "type", e.typ, "err", err)
	}
}

// eventTimeout bounds the wait for one event's publication (a JetStream
// ack).
const eventTimeout = 5 * time.Second

func (w *Worker) publishOne(pub *events.Publisher, data events.Pressure) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	// Counted before it goes out: a subscriber that reads the metrics
	// after the event finds it there. A failure is logged.
	w.metrics.events.WithLabelValues(data.Reason).Inc()
	if _, err := pub.Publish(ctx, data); err != nil {
		w.log.Warn("publishing pressure event", "device", data.DeviceID, "err", err)
	}
}

// sample reads a device, records it in the history, feeds its pressure,
// repeats the critical level at the configured interval, and announces a
// device that stopped (or resumed) answering.
func (w *Worker) sample(g *gpu, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	u, err := w.reading(context.Background(), g, now)
	if err != nil {
		if !g.unavailable {
			g.unavailable = true
			w.log.Error("device unavailable", "device", g.ID(), "err", err)
			level, prev := g.Level()
			w.announce(g, subjects.Usage{SampledAt: now, TotalBytes: g.Info().TotalBytes},
				subjects.Pressure{PressureFigures: subjects.PressureFigures{DeviceID: g.ID(), Level: level, PreviousLevel: prev,
					TotalBytes: g.Info().TotalBytes, WarningThreshold: w.cfg.Thresholds.Warning, CriticalThreshold: w.cfg.Thresholds.Critical}},
				events.ReasonUnavailable)
		}
		return
	}
	p := w.observe(g, u)
	if w.admit(g, now) { // what another process freed may make room
		if u2, err := w.reading(context.Background(), g, now); err == nil {
			u, p = u2, w.observe(g, u2)
		}
	}
	if g.unavailable {
		g.unavailable = false
		w.log.Info("device available again", "device", g.ID())
		w.announce(g, u, p, events.ReasonAvailable)
	} else if p.Level == subjects.LevelCritical && now.Sub(g.lastEvent) >= w.cfg.CriticalRepeat {
		w.announce(g, u, p, events.ReasonRepeat)
	}
	g.Record(u, p.Level)
}

// reading reads g's usage as of now (ledger.Device.Read: auto-release
// included), and announces what it found. The caller holds g.mu.
func (w *Worker) reading(ctx context.Context, g *gpu, now time.Time) (subjects.Usage, error) {
	r, err := g.Read(ctx, now)
	for _, a := range r.Exceeding {
		w.announceAllocation(events.TypeReservationExceeded, events.Allocation{
			DeviceID: g.ID(), Node: w.cfg.Node, AllocationID: a.AllocationID, Tenant: a.Tenant,
			AllocationType: a.AllocationType, SizeBytes: a.SizeBytes, PID: a.PID, ObservedBytes: a.ObservedBytes,
			ExpiresAt: a.ExpiresAt, ObservedAt: now,
		})
	}
	w.returned(g, r.Released, r.ReleaseErr, slog.LevelInfo, "device memory passed the warning threshold or other processes grew")
	return r.Usage, err
}

// returned counts and logs the cached memory the ledger gave back to g's
// device (for the next pressure event, metrics and the log), and why.
func (w *Worker) returned(g *gpu, bytes int64, err error, level slog.Level, why string) {
	if err != nil {
		w.log.Warn("returning cached memory to the device", "device", g.ID(), "why", why, "err", err)
	}
	if bytes > 0 {
		g.released += bytes
		w.metrics.autoReleased.Add(float64(bytes))
		w.log.Log(context.Background(), level, "cached memory returned to the device", "device", g.ID(), "why", why, "released_bytes", bytes)
	}
}

// recheck feeds device truth to the pressure tracker after a change, and
// grants the waiters the change made room for.
func (w *Worker) recheck(g *gpu) {
	u, err := w.reading(context.Background(), g, time.Now().UTC())
	if err != nil {
		w.watch(g.NextDeadline()) // a new lease's expiry, say
		return                    // the device cannot say; the sampler announces it
	}
	w.observe(g, u)
	if w.admit(g, u.SampledAt) {
		if u, err := w.reading(context.Background(), g, time.Now().UTC()); err == nil {
			w.observe(g, u)
		}
	}
}
