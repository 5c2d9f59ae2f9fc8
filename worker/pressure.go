package worker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
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
	p, changed := g.observe(w.cfg.Thresholds, u)
	if changed {
		reason := events.ReasonChanged
		if first {
			reason = events.ReasonStartup
		}
		w.announce(g, u, p, reason)
	}
	return p
}

// announce queues a pressure event for the publisher. The caller holds g.mu.
func (w *Worker) announce(g *gpu, u subjects.Usage, p subjects.Pressure, reason string) {
	g.lastEvent = u.SampledAt
	data := events.Pressure{
		DeviceID:          g.id,
		Node:              w.cfg.Node,
		Reason:            reason,
		Level:             p.Level,
		PreviousLevel:     p.PreviousLevel,
		UsageRatio:        u.UsageRatio,
		UsedBytes:         u.UsedBytes,
		FreeBytes:         u.FreeBytes,
		TotalBytes:        u.TotalBytes,
		WarningThreshold:  w.cfg.Thresholds.Warning,
		CriticalThreshold: w.cfg.Thresholds.Critical,
		TopConsumers:      g.consumers(u),
		ObservedAt:        u.SampledAt,
	}
	select {
	case w.events <- data:
	default:
		w.log.Warn("pressure event dropped: the publisher is behind", "device", g.id, "level", p.Level)
	}
}

// consumers lists the largest users of g's memory: models, purposes and
// other processes. The caller holds mu.
func (g *gpu) consumers(u subjects.Usage) []events.Consumer {
	byModel := map[string]int64{}
	for _, a := range g.ledger {
		if a.kind == device.VRAM && a.ModelID != "" {
			byModel[a.ModelID] += a.ReservedBytes
		}
	}
	out := []events.Consumer{}
	for m, b := range byModel {
		out = append(out, events.Consumer{Kind: events.ConsumerModel, Name: m, Bytes: b})
	}
	for _, p := range g.byPurpose() {
		out = append(out, events.Consumer{Kind: events.ConsumerPurpose, Name: p.Purpose, Bytes: p.AllocatedBytes})
	}
	if u.OtherBytes > 0 {
		out = append(out, events.Consumer{Kind: events.ConsumerOther, Name: events.ConsumerOther, Bytes: u.OtherBytes})
	}
	slices.SortFunc(out, func(a, b events.Consumer) int {
		return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return out[:min(len(out), topConsumers)]
}

// publish sends queued events until ctx is done.
func (w *Worker) publish(ctx context.Context, pub *events.Publisher) {
	for {
		select {
		case <-ctx.Done():
			return
		case data := <-w.events:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := pub.Publish(pctx, data); err != nil {
				if !errors.Is(err, context.Canceled) {
					w.log.Warn("publishing pressure event", "device", data.DeviceID, "err", err)
				}
			} else {
				w.metrics.events.WithLabelValues(data.Reason).Inc()
			}
			cancel()
		}
	}
}

// sample reads a device, records it in the history, feeds its pressure,
// repeats the critical level at the configured interval, and announces a
// device that stopped (or resumed) answering.
func (w *Worker) sample(g *gpu, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	u, err := g.usage(context.Background(), now)
	if err != nil {
		if !g.unavailable {
			g.unavailable = true
			w.log.Error("device unavailable", "device", g.id, "err", err)
			level, prev := g.pressure.Level()
			w.announce(g, subjects.Usage{SampledAt: now, TotalBytes: g.info.TotalBytes},
				subjects.Pressure{Level: level, PreviousLevel: prev}, events.ReasonUnavailable)
		}
		return
	}
	p := w.observe(g, u)
	if g.unavailable {
		g.unavailable = false
		w.log.Info("device available again", "device", g.id)
		w.announce(g, u, p, events.ReasonAvailable)
	} else if p.Level == subjects.LevelCritical && now.Sub(g.lastEvent) >= w.cfg.CriticalRepeat {
		w.announce(g, u, p, events.ReasonRepeat)
	}
	g.history.samples.push(subjects.Sample{
		At:                 now,
		UsedBytes:          u.UsedBytes,
		ReservedBytes:      u.ReservedBytes,
		AllocatedBytes:     u.AllocatedBytes,
		UsageRatio:         u.UsageRatio,
		FragmentationRatio: g.pools[device.VRAM].Fragmentation().Ratio,
		Level:              p.Level,
	})
}

// recheck feeds device truth to the pressure tracker after a change. The
// caller holds mu.
func (w *Worker) recheck(g *gpu) {
	u, err := g.usage(context.Background(), time.Now().UTC())
	if err != nil {
		return // the device cannot say; the sampler announces it
	}
	w.observe(g, u)
}
