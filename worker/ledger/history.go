package ledger

import (
	"time"

	"github.com/memworker/memworker/subjects"
)

// ring is a bounded FIFO: pushing onto a full ring drops the oldest item.
type ring[T any] struct {
	items []T
	start int
	n     int
}

func newRing[T any](capacity int) *ring[T] { return &ring[T]{items: make([]T, capacity)} }

func (r *ring[T]) push(v T) {
	if r.n < len(r.items) {
		r.items[(r.start+r.n)%len(r.items)] = v
		r.n++
		return
	}
	r.items[r.start] = v
	r.start = (r.start + 1) % len(r.items)
}

// each calls f on every item, oldest first, until f returns false.
func (r *ring[T]) each(f func(T) bool) {
	for i := 0; i < r.n; i++ {
		if !f(r.items[(r.start+i)%len(r.items)]) {
			return
		}
	}
}

func (r *ring[T]) len() int { return r.n }

// memEvent is one allocation or free, for rates and the size histogram.
type memEvent struct {
	at    time.Time
	bytes int64
	alloc bool
}

// levelChange is a pressure level taking effect.
type levelChange struct {
	at    time.Time
	level subjects.Level
}

// history is a device's bounded in-memory past: samples from the monitor,
// allocation and free events, and pressure level changes. Its owner (the
// gpu) serialises calls.
type history struct {
	samples *ring[subjects.Sample]
	events  *ring[memEvent]
	levels  *ring[levelChange]
}

// History bounds: a day of samples at the default 5 s interval, the last
// 100,000 allocations and frees, the last 10,000 level changes.
const (
	historySamples = 24 * 3600 / 5
	historyEvents  = 100_000
	historyLevels  = 10_000
)

func newHistory() *history {
	return &history{
		samples: newRing[subjects.Sample](historySamples),
		events:  newRing[memEvent](historyEvents),
		levels:  newRing[levelChange](historyLevels),
	}
}

// sizeBuckets are the histogram's upper bounds: 4 KiB to 64 GiB by powers
// of 16, then everything up to the largest request.
var sizeBuckets = []int64{4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 4 << 30, 64 << 30, subjects.MaxSizeBytes}

// summarise fills the window [from, to] of the reply from the history.
func (h *history) summarise(r *subjects.AnalyticsReply, from, to time.Time, maxSamples int) {
	var inWindow []subjects.Sample
	var sumUsed, sumReserved float64
	var sumFrag float64
	h.samples.each(func(s subjects.Sample) bool {
		if s.At.Before(from) || s.At.After(to) {
			return true
		}
		inWindow = append(inWindow, s)
		r.PeakUsedBytes = max(r.PeakUsedBytes, s.UsedBytes)
		r.PeakReservedBytes = max(r.PeakReservedBytes, s.ReservedBytes)
		sumUsed += float64(s.UsedBytes)
		sumReserved += float64(s.ReservedBytes)
		sumFrag += s.FragmentationRatio
		return true
	})
	r.SampleCount = len(inWindow)
	if n := float64(len(inWindow)); n > 0 {
		r.MeanUsedBytes = int64(sumUsed / n)
		r.MeanReservedBytes = int64(sumReserved / n)
		r.MeanFragmentationRatio = sumFrag / n
	}
	r.Samples = thin(inWindow, maxSamples)

	r.SizeHistogram = make([]subjects.SizeBucket, len(sizeBuckets))
	for i, le := range sizeBuckets {
		r.SizeHistogram[i].LeBytes = le
	}
	h.events.each(func(e memEvent) bool {
		if e.at.Before(from) || e.at.After(to) {
			return true
		}
		if !e.alloc {
			r.Frees++
			r.FreedBytesTotal += e.bytes
			return true
		}
		r.Allocations++
		r.AllocatedBytesTotal += e.bytes
		for i, le := range sizeBuckets {
			if e.bytes <= le {
				r.SizeHistogram[i].Count++
				break
			}
		}
		return true
	})
	if secs := to.Sub(from).Seconds(); secs > 0 {
		r.AllocationRatePerSecond = float64(r.Allocations) / secs
		r.FreeRatePerSecond = float64(r.Frees) / secs
	}
	r.Pressure = h.timeInLevels(from, to)
}

// timeInLevels splits [from, to] by the level in effect.
func (h *history) timeInLevels(from, to time.Time) subjects.PressureTime {
	var pt subjects.PressureTime
	add := func(level subjects.Level, a, b time.Time) {
		a, b = later(a, from), earlier(b, to)
		if !b.After(a) {
			return
		}
		d := b.Sub(a).Seconds()
		switch level {
		case subjects.LevelCritical:
			pt.CriticalSeconds += d
		case subjects.LevelWarning:
			pt.WarningSeconds += d
		default:
			pt.NormalSeconds += d
		}
	}
	var cur *levelChange
	h.levels.each(func(c levelChange) bool {
		if cur != nil {
			add(cur.level, cur.at, c.at)
		}
		cur = &c
		return true
	})
	if cur != nil {
		add(cur.level, cur.at, to)
	}
	return pt
}

// thin keeps at most n samples, evenly spread, always the last.
func thin(s []subjects.Sample, n int) []subjects.Sample {
	if len(s) <= n {
		return append([]subjects.Sample{}, s...)
	}
	out := make([]subjects.Sample, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, s[(i+1)*len(s)/n-1])
	}
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
