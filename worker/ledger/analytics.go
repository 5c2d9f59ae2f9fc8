package ledger

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// Analytics summarises the device's history over the request's window.
func (d *Device) Analytics(req *subjects.AnalyticsRequest, who Who) subjects.AnalyticsReply {
	now := time.Now().UTC()
	from := now.Add(-time.Duration(req.WindowSeconds * float64(time.Second)))
	r := subjects.AnalyticsReply{
		DeviceID:      d.id,
		WindowSeconds: req.WindowSeconds,
		From:          from,
		To:            now,
		ByPurpose:     d.purposesOf(who),
	}
	d.history.summarise(&r, from, now, req.MaxSamples)
	return r
}

// Thresholds of the recommendations.
const (
	// recCachedMin: cached empty segments worth releasing (or 1% of the
	// device, whichever is larger).
	recCachedMin = 64 << 20
	// recFragmentation: fragmentation ratio worth a defragment.
	recFragmentation = 0.25
)

// Recommendations says what would relieve the device, most urgent first,
// each with a request ready to send. u and p are the device's usage and
// pressure now.
func (d *Device) Recommendations(u subjects.Usage, p subjects.Pressure) subjects.OptimizationRecsReply {
	now := u.SampledAt
	underPressure := p.Level != subjects.LevelNormal
	severity := func(base string) string {
		if underPressure && base == subjects.SeverityInfo {
			return subjects.SeverityWarning
		}
		return base
	}
	var recs []subjects.Recommendation
	frag := d.pools[device.VRAM].Fragmentation()

	expired, expiredBytes := 0, int64(0)
	idle, idleBytes := 0, int64(0)
	idleCutoff := now.Add(-d.cfg.IdleAfter)
	for _, a := range d.allocs {
		if !a.idle() {
			continue
		}
		if a.expiredAt(now) {
			expired++
			expiredBytes += a.reserved()
		}
		if a.relocatable() && a.kind == device.VRAM && a.allocType() == subjects.VRAM && !a.has(persistent) && a.lastUsedAt().Before(idleCutoff) {
			idle++
			idleBytes += a.reserved()
		}
	}
	if expired > 0 {
		recs = append(recs, subjects.Recommendation{
			Type: "free_expired", Severity: severity(subjects.SeverityInfo),
			Message:               fmt.Sprintf("%d allocations (%d bytes) are past their ttl", expired, expiredBytes),
			EstimatedSavingsBytes: expiredBytes,
			SuggestedAction:       action(subjects.Optimize, map[string]any{"strategies": []string{subjects.StrategyFreeExpired, subjects.StrategyReleaseCached}}),
		})
	}
	if frag.ReleasableBytes >= max(recCachedMin, u.TotalBytes/100) {
		recs = append(recs, subjects.Recommendation{
			Type: "release_cached", Severity: severity(subjects.SeverityInfo),
			Message:               fmt.Sprintf("the pool caches %d bytes of free memory (%d empty segments) that other processes could use", frag.ReleasableBytes, frag.EmptySegments),
			EstimatedSavingsBytes: frag.ReleasableBytes,
			SuggestedAction:       action(subjects.Optimize, map[string]any{"strategies": []string{subjects.StrategyReleaseCached}}),
		})
	}
	if segs, bytes := d.pools[device.VRAM].PlanCompaction(movableIn(d.owners())); segs > 0 && frag.Ratio >= recFragmentation {
		recs = append(recs, subjects.Recommendation{
			Type: "defragment", Severity: severity(subjects.SeverityInfo),
			Message:               fmt.Sprintf("the pool is %.0f%% fragmented: moving live blocks would empty %d segments (%d bytes)", frag.Ratio*100, segs, bytes),
			EstimatedSavingsBytes: bytes,
			SuggestedAction:       action(subjects.Defragment, map[string]any{}),
		})
	}
	if idle > 0 {
		recs = append(recs, subjects.Recommendation{
			Type: "offload_idle", Severity: severity(subjects.SeverityInfo),
			Message:               fmt.Sprintf("%d allocations (%d bytes) have not been used for %v", idle, idleBytes, d.cfg.IdleAfter),
			EstimatedSavingsBytes: idleBytes,
			SuggestedAction: action(subjects.Optimize, map[string]any{
				"strategies": []string{subjects.StrategyOffloadIdle}, "idle_seconds": d.cfg.IdleAfter.Seconds()}),
		})
	}
	if underPressure {
		if rec, ok := d.modelRec(u, p); ok {
			recs = append(recs, rec)
		}
	}
	rank(recs)
	if recs == nil {
		recs = []subjects.Recommendation{}
	}
	return subjects.OptimizationRecsReply{DeviceID: d.id, Level: p.Level, UsageRatio: u.UsageRatio, Recommendations: recs}
}

// costs rank what recommendations cost to carry out: returning memory
// nobody uses costs nothing, compaction copies on the device, offloading
// moves data off it (and someone will want it back).
var costs = map[string]int{"free_expired": 0, "release_cached": 0, "defragment": 1, "offload_idle": 2, "offload_models": 2}

// rank orders recommendations by cost, cheapest first, then by estimated
// savings, largest first.
func rank(recs []subjects.Recommendation) {
	slices.SortStableFunc(recs, func(a, b subjects.Recommendation) int {
		return cmp.Or(cmp.Compare(costs[a.Type], costs[b.Type]), cmp.Compare(b.EstimatedSavingsBytes, a.EstimatedSavingsBytes))
	})
}

// modelRec recommends offloading model memory until usage is back under the
// warning threshold (less its hysteresis margin, so the level drops).
func (d *Device) modelRec(u subjects.Usage, p subjects.Pressure) (subjects.Recommendation, bool) {
	var resident int64
	for _, a := range d.allocs {
		if a.model != "" && a.kind == device.VRAM && !a.has(persistent) && a.relocatable() {
			resident += a.reserved()
		}
	}
	if resident == 0 {
		return subjects.Recommendation{}, false
	}
	th := d.cfg.Thresholds
	target := math.Floor((th.Warning - th.Hysteresis) * 100)
	// Memory nobody can get beyond the target's share of the device.
	excess := u.TotalBytes - u.AvailableBytes - int64(target/100*float64(u.TotalBytes))
	sev := subjects.SeverityWarning
	if p.Level == subjects.LevelCritical {
		sev = subjects.SeverityCritical
	}
	return subjects.Recommendation{
		Type:     "offload_models",
		Severity: sev,
		Message: fmt.Sprintf("memory pressure is %s at %.1f%%: offload least recently used model memory (%d bytes resident) to reach %.0f%%",
			p.Level, u.PressureRatio*100, resident, target),
		EstimatedSavingsBytes: min(resident, max(excess, 0)),
		SuggestedAction: action(subjects.ModelOptimize, map[string]any{
			"optimization_type": subjects.OptimizeOffload, "target_usage_percentage": target}),
	}, true
}

func action(op subjects.Op, data map[string]any) subjects.SuggestedAction {
	return subjects.SuggestedAction{Op: op, Data: data}
}
