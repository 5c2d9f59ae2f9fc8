package worker

import (
	"context"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
)

// TestTelemetryIsReadAtMostOncePerMaxAge: within TelemetryMaxAge a reply
// shows the process list read before, with when it was read; after it, a
// fresh one. With TruthMaxAge 0 device truth is fresh in every reply.
//
// The requests' moments are the test's own (what a request's reply is built
// as of), so "within the max age" holds however slowly the test runs.
func TestTelemetryIsReadAtMostOncePerMaxAge(t *testing.T) {
	w, b := testWorker(t, "telemetry", func(c *Config) { c.TelemetryMaxAge, c.TruthMaxAge = 200*time.Millisecond, 0 })
	at := usageAt(t, w)
	start := time.Now()
	moment := start
	usage := func() subjects.Usage { moment = moment.Add(time.Millisecond); return at(moment) }
	external := func(u subjects.Usage) int64 {
		for _, p := range u.Processes {
			if p.PID == sim.ExternalPID {
				return p.UsedBytes
			}
		}
		return 0
	}

	b.SetExternalUsage(0, 100<<20)
	first := usage()
	if external(first) != 100<<20 || first.ProcessesSampledAt == nil {
		t.Fatalf("first reply: processes %+v sampled at %v", first.Processes, first.ProcessesSampledAt)
	}
	b.SetExternalUsage(0, 300<<20)
	second := usage()
	if external(second) != 100<<20 || !second.ProcessesSampledAt.Equal(*first.ProcessesSampledAt) {
		t.Errorf("within the max age: processes %+v sampled at %v, want the first reading", second.Processes, second.ProcessesSampledAt)
	}
	if second.UsedBytes != 300<<20 {
		t.Errorf("device truth within the max age: used %d, want %d", second.UsedBytes, 300<<20)
	}
	moment = start.Add(w.cfg.TelemetryMaxAge) // the first reading's max age is out
	third := usage()
	if external(third) != 300<<20 || !third.ProcessesSampledAt.After(*first.ProcessesSampledAt) {
		t.Errorf("after the max age: processes %+v sampled at %v, want a fresh reading", third.Processes, third.ProcessesSampledAt)
	}
}

// TestDeviceTruthIsReadAtMostOncePerMaxAge: within TruthMaxAge the
// worker's own allocations show at once and exactly, what another process
// does shows after it, and an unavailable device after it too.
//
// The requests' moments are the test's own (each op is run as of one), so
// "within the max age" holds however slowly the test runs.
func TestDeviceTruthIsReadAtMostOncePerMaxAge(t *testing.T) {
	w, b := testWorker(t, "truth", func(c *Config) { c.TruthMaxAge = 200 * time.Millisecond })
	at := usageAt(t, w)
	start := time.Now()
	moment := start
	next := func() time.Time { moment = moment.Add(time.Millisecond); return moment }
	usage := func() subjects.Usage { return at(next()) }
	act := func(op subjects.Op, data string) error {
		g := w.gpus[0]
		g.mu.Lock()
		defer g.mu.Unlock()
		_, err := w.ops()[op](context.Background(), g, ledger.Call{Now: next()}, []byte(data))
		return err
	}

	if u := usage(); u.UsedBytes != 0 {
		t.Fatalf("fresh device: used %d", u.UsedBytes)
	}
	b.SetExternalUsage(0, 100<<20)
	if err := act(subjects.Allocate, `{"size_bytes":50000000}`); err != nil {
		t.Fatal(err)
	}
	u := usage()
	if u.ReservedBytes == 0 || u.UsedBytes != u.ReservedBytes || u.FreeBytes != u.TotalBytes-u.ReservedBytes {
		t.Errorf("within the max age: used %d, free %d, want the worker's own %d at once and not yet the other process's", u.UsedBytes, u.FreeBytes, u.ReservedBytes)
	}
	b.SetUnavailable(0, true)
	if err := act(subjects.GetUsage, `{}`); err != nil {
		t.Errorf("within the max age the last reading stands: %v", err)
	}
	moment = start.Add(w.cfg.TruthMaxAge) // the first reading's max age is out
	if err := act(subjects.GetUsage, `{}`); wireError(err).Code != subjects.CodeDeviceUnavailable {
		t.Errorf("after the max age, an unavailable device: %v, want DEVICE_UNAVAILABLE", err)
	}
	b.SetUnavailable(0, false)
	if u := usage(); u.UsedBytes != u.ReservedBytes+100<<20 {
		t.Errorf("after the max age: used %d, want the worker's %d and the other process's %d", u.UsedBytes, u.ReservedBytes, 100<<20)
	}
	if err := act(subjects.Clear, `{"force":true}`); err != nil {
		t.Fatal(err)
	}
	if u := usage(); u.ReservedBytes != 0 || u.UsedBytes != 100<<20 {
		t.Errorf("after clear, within the max age: reserved %d, used %d, want 0 and the other process's %d", u.ReservedBytes, u.UsedBytes, 100<<20)
	}
}

// usageOf returns a function that reads get_usage of w's first device.
func usageOf(t *testing.T, w *Worker) func() subjects.Usage {
	at := usageAt(t, w)
	return func() subjects.Usage {
		t.Helper()
		return at(time.Now())
	}
}

// usageAt returns a function that reads get_usage of w's first device as
// of a request at now.
func usageAt(t *testing.T, w *Worker) func(now time.Time) subjects.Usage {
	g := w.gpus[0]
	return func(now time.Time) subjects.Usage {
		t.Helper()
		g.mu.Lock()
		defer g.mu.Unlock()
		u, err := w.getUsage(context.Background(), g, ledger.Call{Now: now}, &subjects.UsageRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return *u.(*subjects.Usage)
	}
}
