// Package monitor turns memory usage into pressure levels. Levels are a pure
// function of the usage ratio and the current level, with hysteresis so a
// device hovering at a threshold does not flap.
package monitor

import (
	"fmt"
	"math"
	"time"

	"github.com/memworker/memworker/subjects"
)

// Thresholds are the usage ratios at which pressure rises, and the margin
// below a threshold usage must fall to before the level drops again.
type Thresholds struct {
	Warning    float64
	Critical   float64
	Hysteresis float64
}

// DefaultThresholds are the seed's 0.85 for warning, 0.95 for critical, and
// a margin of 0.02.
func DefaultThresholds() Thresholds {
	return Thresholds{Warning: 0.85, Critical: 0.95, Hysteresis: 0.02}
}

// Validate checks 0 < Warning < Critical <= 1 and 0 <= Hysteresis < Warning.
func (t Thresholds) Validate() error {
	bad := func(f float64) bool { return math.IsNaN(f) || math.IsInf(f, 0) }
	if bad(t.Warning) || bad(t.Critical) || bad(t.Hysteresis) ||
		t.Warning <= 0 || t.Warning >= t.Critical || t.Critical > 1 ||
		t.Hysteresis < 0 || t.Hysteresis >= t.Warning {
		return fmt.Errorf("pressure thresholds need 0 < warning (%v) < critical (%v) <= 1 and 0 <= hysteresis (%v) < warning",
			t.Warning, t.Critical, t.Hysteresis)
	}
	return nil
}

func (t Thresholds) levelOf(ratio float64) subjects.Level {
	switch {
	case ratio >= t.Critical:
		return subjects.LevelCritical
	case ratio >= t.Warning:
		return subjects.LevelWarning
	}
	return subjects.LevelNormal
}

// Next is the level after observing ratio at level cur: it rises as soon as
// a threshold is reached, and falls only once ratio is Hysteresis below it.
func (t Thresholds) Next(cur subjects.Level, ratio float64) subjects.Level {
	if up := t.levelOf(ratio); rank(up) > rank(cur) {
		return up
	}
	if down := t.levelOf(ratio + t.Hysteresis); rank(down) < rank(cur) {
		return down
	}
	return cur
}

func rank(l subjects.Level) int {
	switch l {
	case subjects.LevelWarning:
		return 1
	case subjects.LevelCritical:
		return 2
	}
	return 0
}

// Tracker follows one device's pressure across observations. The zero
// Tracker is at normal, never observed.
type Tracker struct {
	level, previous subjects.Level
	changedAt       time.Time
	ratio, average  float64
	observedAt      time.Time
}

// The trend compares the usage ratio with its exponentially weighted average
// over about trendWindow; within trendEpsilon of it, usage is steady.
const (
	trendWindow  = 30 * time.Second
	trendEpsilon = 0.005
)

// Observe records a usage ratio and reports whether the level changed. The
// first observation always counts as a change (from no level to one).
func (tr *Tracker) Observe(t Thresholds, ratio float64, now time.Time) (changed bool) {
	first := tr.observedAt.IsZero()
	if first {
		tr.level = subjects.LevelNormal
		tr.average = ratio
	} else if dt := now.Sub(tr.observedAt); dt > 0 {
		tr.average = tr.averageAt(ratio, dt)
	}
	next := t.Next(tr.level, ratio)
	changed = first || next != tr.level
	if changed {
		if !first {
			tr.previous = tr.level
		}
		tr.level = next
		tr.changedAt = now
	}
	tr.ratio = ratio
	tr.observedAt = now
	return changed
}

// Level is the current level, and the one before the last change.
func (tr *Tracker) Level() (level, previous subjects.Level) { return tr.level, tr.previous }

// ChangedAt is when the level last changed.
func (tr *Tracker) ChangedAt() time.Time { return tr.changedAt }

// Trend says whether usage is above or below its recent average.
func (tr *Tracker) Trend() string { return trend(tr.ratio - tr.average) }

// TrendAt is the trend an observation of the same ratio would show at now:
// the average drifts towards the ratio, so a rising or falling trend
// becomes steady in time.
func (tr *Tracker) TrendAt(now time.Time) string {
	if dt := now.Sub(tr.observedAt); !tr.observedAt.IsZero() && dt > 0 {
		return trend(tr.ratio - tr.averageAt(tr.ratio, dt))
	}
	return tr.Trend()
}

// averageAt is the average after ratio was observed dt after the last
// observation.
func (tr *Tracker) averageAt(ratio float64, dt time.Duration) float64 {
	alpha := 1 - math.Exp(-float64(dt)/float64(trendWindow))
	return tr.average + alpha*(ratio-tr.average)
}

// trend names a ratio's difference d from its average.
func trend(d float64) string {
	switch {
	case d > trendEpsilon:
		return subjects.TrendRising
	case d < -trendEpsilon:
		return subjects.TrendFalling
	}
	return subjects.TrendSteady
}
