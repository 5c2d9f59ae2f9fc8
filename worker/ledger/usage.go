package ledger

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// Usage reads device truth and puts the worker's own figures beside it. It
// runs after every mutation, so it leaves out what needs a walk of the
// ledger (ByPurpose: see WithPurposes) and telemetry (AddTelemetry).
func (d *Device) Usage(ctx context.Context, now time.Time) (subjects.Usage, error) {
	vram, pinned := d.pools[device.VRAM].Stats(), d.pools[device.Pinned].Stats()
	mi, err := d.deviceTruth(ctx, now, vram.ReservedBytes)
	if err != nil {
		return subjects.Usage{}, err
	}
	used := mi.TotalBytes - mi.FreeBytes
	u := subjects.Usage{
		DeviceID:        d.id,
		TotalBytes:      mi.TotalBytes,
		FreeBytes:       mi.FreeBytes,
		UsedBytes:       used,
		ReservedBytes:   vram.ReservedBytes,
		AllocatedBytes:  vram.AllocatedBytes,
		RequestedBytes:  vram.RequestedBytes,
		CachedBytes:     vram.ReservedBytes - vram.AllocatedBytes,
		OtherBytes:      max(used-vram.ReservedBytes, 0),
		PinnedHostBytes: pinned.ReservedBytes,
		Allocations:     len(d.allocs),
		SampledAt:       now,
		WaitingRequests: len(d.queue.waiters),
		WaitingBytes:    d.queue.bytes,
	}
	u.ReclaimableBytes = u.CachedBytes
	u.ReservationUnusedBytes = d.reservationUnused(ctx, now)
	u.AvailableBytes = max(u.FreeBytes+u.ReclaimableBytes-u.ReservationUnusedBytes, 0)
	if mi.TotalBytes > 0 {
		u.UsageRatio = float64(used) / float64(mi.TotalBytes)
		u.UsagePercentage = u.UsageRatio * 100
		u.PressureRatio = min(max(1-float64(u.AvailableBytes)/float64(mi.TotalBytes), 0), 1)
	}
	return u, nil
}

// WithPurposes adds the split by purpose to u, for replies: of every VRAM
// allocation for the operator, of its own for a tenant.
func (d *Device) WithPurposes(u subjects.Usage, who Who) subjects.Usage {
	u.ByPurpose = d.purposesOf(who)
	return u
}

// purposesOf is the split by purpose of what who may see.
func (d *Device) purposesOf(who Who) []subjects.PurposeUsage {
	if who.Operator() {
		return d.byPurpose()
	}
	idx := map[string]int{}
	out := []subjects.PurposeUsage{}
	for _, a := range d.allocs {
		if a.kind != device.VRAM || !a.visibleTo(who) {
			continue
		}
		p := cmp.Or(a.purpose, unspecified)
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, subjects.PurposeUsage{Purpose: p})
		}
		out[i].Allocations++
		out[i].AllocatedBytes += a.reserved()
	}
	slices.SortFunc(out, func(a, b subjects.PurposeUsage) int { return strings.Compare(a.Purpose, b.Purpose) })
	return out
}

// unspecified is the purpose of allocations made without one.
const unspecified = "unspecified"

// byPurpose is the split of the VRAM allocations by purpose, read from
// the figures kept by name (no walk of the ledger).
func (d *Device) byPurpose() []subjects.PurposeUsage {
	idx := map[string]int{}
	out := []subjects.PurposeUsage{}
	for name, n := range d.purposes {
		if n.vram == 0 {
			continue
		}
		p := name
		if p == "" {
			p = unspecified
		}
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, subjects.PurposeUsage{Purpose: p})
		}
		out[i].Allocations += n.vram
		out[i].AllocatedBytes += n.vramBytes
	}
	slices.SortFunc(out, func(a, b subjects.PurposeUsage) int { return strings.Compare(a.Purpose, b.Purpose) })
	return out
}

// Observe feeds device truth to the pressure tracker and returns the
// pressure as get_pressure reports it, and whether the level changed: the
// caller announces a change, so no level goes unannounced.
func (d *Device) Observe(u subjects.Usage) (subjects.Pressure, bool) {
	th := d.cfg.Thresholds
	changed := d.pressure.Observe(th, u.PressureRatio, u.SampledAt)
	level, prev := d.pressure.Level()
	if changed {
		d.history.levels.push(levelChange{at: u.SampledAt, level: level})
	}
	return subjects.Pressure{
		PressureFigures: subjects.PressureFigures{
			DeviceID:               d.id,
			Level:                  level,
			PreviousLevel:          prev,
			UsageRatio:             u.UsageRatio,
			PressureRatio:          u.PressureRatio,
			AvailableBytes:         u.AvailableBytes,
			ReclaimableBytes:       u.ReclaimableBytes,
			ReservationUnusedBytes: u.ReservationUnusedBytes,
			WaitingBytes:           u.WaitingBytes,
			WarningThreshold:       th.Warning,
			CriticalThreshold:      th.Critical,
			UsedBytes:              u.UsedBytes,
			FreeBytes:              u.FreeBytes,
			TotalBytes:             u.TotalBytes,
		},
		ChangedAt: d.pressure.ChangedAt(),
		Trend:     d.pressure.Trend(),
		SampledAt: u.SampledAt,
	}, changed
}

// Level is the current pressure level and the one before it.
func (d *Device) Level() (level, previous subjects.Level) { return d.pressure.Level() }

// Record keeps a sample of u, at level, in the device's history.
func (d *Device) Record(u subjects.Usage, level subjects.Level) {
	d.history.samples.push(subjects.Sample{
		At:                 u.SampledAt,
		UsedBytes:          u.UsedBytes,
		ReservedBytes:      u.ReservedBytes,
		AllocatedBytes:     u.AllocatedBytes,
		UsageRatio:         u.UsageRatio,
		FragmentationRatio: d.pools[device.VRAM].Fragmentation().Ratio,
		Level:              level,
	})
}

// operatorName names the worker's own account among tenant consumers.
const operatorName = "operator"

// Consumers lists the n largest users of the device's memory: models,
// purposes and other processes, largest first.
//
// Once any tenant holds memory, events reach every tenant, so they name no
// tenant's models or purposes: the consumers are then the tenants (and the
// operator), other processes and the pool's cache.
func (d *Device) Consumers(u subjects.Usage, n int) []subjects.Consumer {
	out := []subjects.Consumer{}
	if len(d.tenants) > 1 || d.tenants[""] == nil && len(d.tenants) == 1 {
		for t, f := range d.tenants {
			if f.requested > 0 {
				out = append(out, subjects.Consumer{Kind: subjects.ConsumerTenant, Name: cmp.Or(t, operatorName), Bytes: f.requested})
			}
		}
		if u.OtherBytes > 0 {
			out = append(out, subjects.Consumer{Kind: subjects.ConsumerOther, Name: subjects.ConsumerOther, Bytes: u.OtherBytes})
		}
		if u.ReclaimableBytes > 0 {
			out = append(out, subjects.Consumer{Kind: subjects.ConsumerCache, Name: subjects.ConsumerCache, Bytes: u.ReclaimableBytes})
		}
		return topN(out, n)
	}
	for m, e := range d.modelNames {
		if e.vram > 0 {
			out = append(out, subjects.Consumer{Kind: subjects.ConsumerModel, Name: m, Bytes: e.vramBytes})
		}
	}
	for _, p := range d.byPurpose() {
		out = append(out, subjects.Consumer{Kind: subjects.ConsumerPurpose, Name: p.Purpose, Bytes: p.AllocatedBytes})
	}
	if u.OtherBytes > 0 {
		out = append(out, subjects.Consumer{Kind: subjects.ConsumerOther, Name: subjects.ConsumerOther, Bytes: u.OtherBytes})
	}
	return topN(out, n)
}

// topN is the n largest consumers, largest first.
func topN(out []subjects.Consumer, n int) []subjects.Consumer {
	slices.SortFunc(out, func(a, b subjects.Consumer) int {
		return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return out[:min(len(out), n)]
}
