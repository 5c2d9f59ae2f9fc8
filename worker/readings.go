package worker

import (
	"context"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// truth is one reading of device truth, with the pool's reservation at the
// time, so later changes of the worker's own can be applied to it exactly.
type truth struct {
	at       time.Time
	mi       device.MemInfo
	reserved int64
}

// deviceTruth returns the device's total and free bytes as of now. The
// driver is asked at most once per TruthMaxAge: a reading is a driver
// round trip (cuMemGetInfo took 5 to 7 µs on an H100, more under load, and
// was the largest cost of a status there), while a busy device serves tens
// of thousands of requests a second. Between readings the worker's own
// reservations, which it knows exactly, are applied to the last one, so an
// allocation shows at once (and its pressure check sees it); other
// processes' use shows within TruthMaxAge. The caller holds mu.
func (g *gpu) deviceTruth(ctx context.Context, now time.Time, reserved int64) (device.MemInfo, error) {
	t := &g.truth
	if t.at.IsZero() || now.Sub(t.at) >= g.truthMaxAge || now.Before(t.at) {
		mi, err := g.backend.MemInfo(ctx, g.index)
		if err != nil {
			*t = truth{}
			return mi, err
		}
		*t = truth{at: now, mi: mi, reserved: reserved}
		return mi, nil
	}
	mi := t.mi
	mi.FreeBytes = min(max(mi.FreeBytes-(reserved-t.reserved), 0), mi.TotalBytes)
	return mi, nil
}

// telemetry is one reading of a device's processes and driver reservation.
// Its slice and time are never changed once read: replies share them.
type telemetry struct {
	at       *time.Time
	procs    []subjects.ProcessUsage
	reserved int64
	ok       bool
}

// addTelemetry adds what the backend's telemetry knows (NVML: processes,
// driver reservations) to u, read at most once per TelemetryMaxAge. It is
// only for replies: a reading costs far more than the rest of a status
// (26 to 43 µs on an H100, see BenchmarkTelemetry), too slow for every request.
// The caller holds mu.
func (g *gpu) addTelemetry(ctx context.Context, u *subjects.Usage) {
	pl, ok := g.backend.(processLister)
	if !ok {
		return
	}
	t := &g.telemetry
	if t.at == nil || u.SampledAt.Sub(*t.at) >= g.telemetryAge || u.SampledAt.Before(*t.at) {
		procs, reserved, err := pl.Processes(ctx, g.index)
		// A failed reading is kept too, so a broken NVML is not asked on
		// every request; telemetry is extra, usage stands on device truth.
		at := u.SampledAt
		*t = telemetry{at: &at, reserved: reserved, ok: err == nil}
		for _, p := range procs {
			t.procs = append(t.procs, subjects.ProcessUsage{PID: p.PID, UsedBytes: p.UsedBytes})
		}
	}
	if !t.ok {
		return
	}
	u.DriverReservedBytes, u.Processes, u.ProcessesSampledAt = t.reserved, t.procs, t.at
}
