package monitor

import (
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
)

const (
	normal   = subjects.LevelNormal
	warning  = subjects.LevelWarning
	critical = subjects.LevelCritical
)

func TestNextRisesAtThresholdsAndFallsWithHysteresis(t *testing.T) {
	th := DefaultThresholds() // 0.85, 0.95, margin 0.02
	tests := []struct {
		name  string
		cur   subjects.Level
		ratio float64
		want  subjects.Level
	}{
		{"idle", normal, 0.10, normal},
		{"just under warning", normal, 0.8499, normal},
		{"at warning", normal, 0.85, warning},
		{"normal straight to critical", normal, 0.97, critical},
		{"warning rises at critical", warning, 0.95, critical},
		{"warning holds inside the margin", warning, 0.84, warning},
		{"warning falls below the margin", warning, 0.8299, normal},
		{"critical holds inside the margin", critical, 0.935, critical},
		{"critical falls to warning", critical, 0.92, warning},
		{"critical falls to normal", critical, 0.20, normal},
		{"full", warning, 1.0, critical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := th.Next(tt.cur, tt.ratio); got != tt.want {
				t.Errorf("Next(%s, %v) = %s, want %s", tt.cur, tt.ratio, got, tt.want)
			}
		})
	}
}

func TestThresholdsValidate(t *testing.T) {
	tests := []struct {
		th Thresholds
		ok bool
	}{
		{DefaultThresholds(), true},
		{Thresholds{Warning: 0.5, Critical: 1, Hysteresis: 0}, true},
		{Thresholds{Warning: 0.95, Critical: 0.85}, false},
		{Thresholds{Warning: 0, Critical: 0.9}, false},
		{Thresholds{Warning: 0.8, Critical: 1.1}, false},
		{Thresholds{Warning: 0.8, Critical: 0.9, Hysteresis: -0.1}, false},
		{Thresholds{Warning: 0.8, Critical: 0.9, Hysteresis: 0.8}, false},
	}
	for _, tt := range tests {
		if err := tt.th.Validate(); (err == nil) != tt.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tt.th, err, tt.ok)
		}
	}
}

func TestTrackerDoesNotFlap(t *testing.T) {
	th := DefaultThresholds()
	var tr Tracker
	now := time.Unix(0, 0)
	type step struct {
		ratio   float64
		changed bool
		level   subjects.Level
	}
	steps := []step{
		{0.50, true, normal}, // first observation
		{0.86, true, warning},
		{0.849, false, warning},
		{0.851, false, warning},
		{0.84, false, warning},
		{0.86, false, warning},
		{0.80, true, normal},
		{0.80, false, normal},
	}
	for i, s := range steps {
		now = now.Add(time.Second)
		changed := tr.Observe(th, s.ratio, now)
		level, _ := tr.Level()
		if changed != s.changed || level != s.level {
			t.Fatalf("step %d (%v): changed=%v level=%s, want %v %s", i, s.ratio, changed, level, s.changed, s.level)
		}
	}
	if _, prev := tr.Level(); prev != warning {
		t.Errorf("previous level %s, want warning", prev)
	}
	if got := tr.ChangedAt(); !got.Equal(time.Unix(7, 0)) {
		t.Errorf("changed at %v, want the 7th second", got)
	}
}

func TestTrendComparesWithTheRecentAverage(t *testing.T) {
	th := DefaultThresholds()
	var tr Tracker
	now := time.Unix(0, 0)
	observe := func(ratio float64, after time.Duration) string {
		now = now.Add(after)
		tr.Observe(th, ratio, now)
		return tr.Trend()
	}
	if got := observe(0.5, 0); got != subjects.TrendSteady {
		t.Errorf("first observation: %s, want steady", got)
	}
	if got := observe(0.8, time.Millisecond); got != subjects.TrendRising {
		t.Errorf("a jump up: %s, want rising", got)
	}
	if got := observe(0.8, time.Second); got != subjects.TrendRising {
		t.Errorf("a second after the jump: %s, want still rising", got)
	}
	if got := observe(0.8, 5*time.Minute); got != subjects.TrendSteady {
		t.Errorf("five minutes later: %s, want steady", got)
	}
	if got := observe(0.3, time.Second); got != subjects.TrendFalling {
		t.Errorf("a drop: %s, want falling", got)
	}
}
