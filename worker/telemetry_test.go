package worker

import (
	"context"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
)

// TestTelemetryIsReadAtMostOncePerMaxAge: within TelemetryMaxAge a reply
// shows the process list read before, with when it was read; after it, a
// fresh one. Device truth is fresh in every reply.
func TestTelemetryIsReadAtMostOncePerMaxAge(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Node = "telemetry"
	b := sim.New(sim.Default(1, 1<<30))
	cfg.Backend = b
	cfg.TelemetryMaxAge = 200 * time.Millisecond
	w, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := w.gpus[0]
	usage := func() subjects.Usage {
		t.Helper()
		g.mu.Lock()
		defer g.mu.Unlock()
		u, err := w.getUsage(context.Background(), g, &subjects.UsageRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return u.(subjects.Usage)
	}
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
	time.Sleep(cfg.TelemetryMaxAge)
	third := usage()
	if external(third) != 300<<20 || !third.ProcessesSampledAt.After(*first.ProcessesSampledAt) {
		t.Errorf("after the max age: processes %+v sampled at %v, want a fresh reading", third.Processes, third.ProcessesSampledAt)
	}
}
