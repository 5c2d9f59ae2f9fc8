package ledger_test

import (
	"testing"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/monitor"
)

// TestAheadBytesAreTheOffloadThatEndsWarning: at normal pressure nothing is
// pinned ahead; past warning, the least recently used models, whole, until
// their offload would bring pressure under warning less the hysteresis.
func TestAheadBytesAreTheOffloadThatEndsWarning(t *testing.T) {
	d, _ := newDevice(t, gib, func(c *ledger.Config) { c.Thresholds = monitor.DefaultThresholds() })
	old := allocate(t, d, subjects.AllocateRequest{SizeBytes: 100 * mib, ModelID: "old"})
	mid := allocate(t, d, subjects.AllocateRequest{SizeBytes: 200 * mib, ModelID: "mid"})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: 300 * mib, ModelID: "new"})
	allocate(t, d, subjects.AllocateRequest{SizeBytes: 300 * mib}) // no model: never offloaded
	at := func(level subjects.Level, ratio float64) subjects.Pressure {
		return subjects.Pressure{PressureFigures: subjects.PressureFigures{Level: level, PressureRatio: ratio, TotalBytes: gib}}
	}
	for _, tt := range []struct {
		name string
		p    subjects.Pressure
		want int64
	}{
		{"normal", at(subjects.LevelNormal, 0.84), 0},
		{"warning, the oldest model suffices", at(subjects.LevelWarning, 0.90), old.ReservedBytes},
		{"warning, two models", at(subjects.LevelWarning, 0.95), old.ReservedBytes + mid.ReservedBytes},
		{"critical, more than the models hold", at(subjects.LevelCritical, 2), 600 * mib},
	} {
		if got := d.AheadBytes(tt.p); got != tt.want {
			t.Errorf("%s: %d MiB ahead, want %d MiB", tt.name, got/mib, tt.want/mib)
		}
	}
}
