package ledger

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// models groups the ledger by model_id (allocations without one are not a
// model's), narrowed to modelID when set.
func (d *Device) models(modelID string, who Who) map[string][]*allocation {
	out := map[string][]*allocation{}
	for _, a := range d.sorted() {
		if a.model != "" && (modelID == "" || a.model == modelID) && a.visibleTo(who) {
			out[a.model] = append(out[a.model], a)
		}
	}
	return out
}

// ModelStatus reports the memory of each model (or of req.ModelID).
func (d *Device) ModelStatus(req *subjects.ModelStatusRequest, who Who) subjects.ModelStatusReply {
	reply := subjects.ModelStatusReply{Models: []subjects.ModelMemory{}}
	for id, allocs := range d.models(req.ModelID, who) {
		m := subjects.ModelMemory{ModelID: id, DeviceID: d.id}
		for _, a := range allocs {
			m.Allocations++
			if a.has(persistent) {
				m.PersistentAllocations++
			}
			switch {
			case a.kind == device.VRAM:
				m.ResidentBytes += a.reserved()
			case a.has(offloaded):
				m.OffloadedBytes += a.reserved()
			default:
				m.HostBytes += a.reserved()
			}
			if a.lastUsedAt().After(m.LastUsedAt) {
				m.LastUsedAt = a.lastUsedAt()
			}
		}
		reply.Models = append(reply.Models, m)
	}
	slices.SortFunc(reply.Models, func(a, b subjects.ModelMemory) int { return strings.Compare(a.ModelID, b.ModelID) })
	return reply
}

// candidate is a model whose resident memory model_optimize may act on.
type candidate struct {
	id       string
	allocs   []*allocation
	lastUsed time.Time
}

// leastRecentlyUsed orders candidates by their last use, oldest first; ties
// by model id, so the choice is deterministic.
func leastRecentlyUsed(c []candidate) {
	slices.SortFunc(c, func(a, b candidate) int {
		if n := a.lastUsed.Compare(b.lastUsed); n != 0 {
			return n
		}
		return strings.Compare(a.id, b.id)
	})
}

// candidates lists, least recently used first, the models whose memory
// the request may act on as a whole: their resident allocations for
// offload and evict, their offloaded ones for restore. A model that cannot
// be moved whole (persistent allocations without force, one being
// transferred or exported) is skipped, with the reason.
func (d *Device) candidates(req *subjects.ModelOptimizeRequest, who Who) (lru []candidate, skipped []subjects.SkippedModel, persistentKept int) {
	restore := req.OptimizationType == subjects.OptimizeRestore
	for id, allocs := range d.models(req.ModelID, who) {
		c := candidate{id: id}
		reason := ""
		for _, a := range allocs {
			if restore != a.has(offloaded) || (!restore && a.kind != device.VRAM) {
				continue
			}
			switch {
			case !a.idle():
				reason = "an allocation of it is being transferred"
			case a.has(exported) && req.OptimizationType != subjects.OptimizeEvict:
				reason = "an allocation of it is exported to another process"
			case a.has(persistent) && !req.Force && !restore:
				persistentKept++
				if reason == "" {
					reason = "it has persistent allocations; use force to include them"
				}
			}
			c.allocs = append(c.allocs, a)
			if a.lastUsedAt().After(c.lastUsed) {
				c.lastUsed = a.lastUsedAt()
			}
		}
		switch {
		case len(c.allocs) == 0:
		case reason != "":
			skipped = append(skipped, subjects.SkippedModel{ModelID: id, Reason: reason})
		default:
			lru = append(lru, c)
		}
	}
	leastRecentlyUsed(lru)
	if restore {
		slices.Reverse(lru) // the most recently used back first
	}
	slices.SortFunc(skipped, func(a, b subjects.SkippedModel) int { return strings.Compare(a.ModelID, b.ModelID) })
	return lru, skipped, persistentKept
}

// ModelOptimize offloads or evicts the device-resident memory of the least
// recently used models, a whole model at a time, until device usage is at
// or below the target; the device memory that empties goes back to the
// device, so device truth drops by what the reply says was freed. Restore
// brings offloaded models back to VRAM, the most recently used first,
// each whole and only when it fits the available memory. A model that
// cannot be moved whole is skipped, and the reply says why.
func (d *Device) ModelOptimize(ctx context.Context, call Call, req *subjects.ModelOptimizeRequest) (subjects.ModelOptimizeReply, error) {
	// start times the work (a measurement); now is the request's time
	// (what the ledger records and decides with).
	start, now, who := time.Now(), call.Now.UTC(), call.Who
	restore := req.OptimizationType == subjects.OptimizeRestore
	target := 100.0
	if req.TargetUsagePercentage != nil {
		target = *req.TargetUsagePercentage
	}
	u, err := d.Usage(ctx, now)
	if err != nil {
		return subjects.ModelOptimizeReply{}, err
	}
	lru, skipped, persistentKept := d.candidates(req, who)
	if skipped == nil {
		skipped = []subjects.SkippedModel{}
	}
	details := subjects.OptimizationDetails{
		OptimizationType:      req.OptimizationType,
		UsagePercentageBefore: u.UsagePercentage,
		TargetUsagePercentage: target,
		Models:                []subjects.ModelAction{},
		SkippedModels:         skipped,
		SkippedPersistent:     persistentKept,
	}
	pct := u.UsagePercentage
	var freed int64
	var ph phases
	var releasing time.Duration
	for _, c := range lru {
		if !restore && pct <= target {
			break
		}
		act := subjects.ModelAction{ModelID: c.id, Action: req.OptimizationType, AllocationIDs: []string{}}
		var size int64
		for _, a := range c.allocs {
			act.Bytes += a.reserved()
			size += a.size
			act.AllocationIDs = append(act.AllocationIDs, a.idString())
		}
		switch req.OptimizationType {
		case subjects.OptimizeEvict:
			for _, a := range c.allocs {
				if err = d.free(a); err != nil {
					break
				}
			}
		case subjects.OptimizeOffload:
			err = d.relocateTimed(ctx, c.allocs, device.Pinned, now, &ph)
		case subjects.OptimizeRestore:
			if _, err := d.door(ctx, claim{tenant: c.allocs[0].tenant, size: size, kind: device.VRAM}, now); err != nil {
				details.SkippedModels = append(details.SkippedModels, subjects.SkippedModel{ModelID: c.id, Reason: err.Error()})
				continue
			}
			err = d.relocateTimed(ctx, c.allocs, device.VRAM, now, &ph)
		}
		if ctx.Err() != nil {
			return subjects.ModelOptimizeReply{}, fmt.Errorf("%s of model %s: %w", req.OptimizationType, c.id, err)
		}
		if err != nil {
			// Nothing of the model moved: it stays whole where it was.
			details.SkippedModels = append(details.SkippedModels, subjects.SkippedModel{ModelID: c.id, Reason: err.Error()})
			continue
		}
		details.Models = append(details.Models, act)
		if !restore {
			t := time.Now()
			released, err := d.release(ctx)
			if err != nil {
				return subjects.ModelOptimizeReply{}, err
			}
			freed += released
			releasing += time.Since(t)
		}
		if u, err = d.Usage(ctx, time.Now().UTC()); err != nil {
			return subjects.ModelOptimizeReply{}, err
		}
		pct = u.UsagePercentage
	}
	details.UsagePercentageAfter = pct
	details.TargetMet = pct <= target
	if restore {
		details.TargetMet = len(details.SkippedModels) == 0
	}
	took := time.Since(start).Seconds()
	reply := subjects.ModelOptimizeReply{
		Success:                  details.TargetMet,
		OptimizationStarted:      now,
		EstimatedDurationSeconds: took,
		MemoryFreedBytes:         freed,
		OptimizationDetails:      details,
		BytesMoved:               ph.bytes,
		SetupSeconds:             ph.setup.Seconds(),
		CopySeconds:              ph.copy.Seconds(),
		ReleaseSeconds:           releasing.Seconds(),
	}
	if took > 0 {
		reply.ThroughputBytesPerSecond = float64(ph.bytes) / took
	}
	if ph.copy > 0 {
		reply.CopyThroughputBytesPerSecond = float64(ph.bytes) / ph.copy.Seconds()
	}
	switch {
	case restore && len(details.Models) == 0 && details.TargetMet:
		reply.Message = "no offloaded model memory to restore"
	case restore:
		reply.Message = fmt.Sprintf("restored %s, %d skipped: usage %.1f%% -> %.1f%%", modelCount(len(details.Models)), len(details.SkippedModels), details.UsagePercentageBefore, pct)
	case len(details.Models) == 0 && details.TargetMet:
		reply.Message = fmt.Sprintf("usage %.1f%% is already at or below the target %.1f%%", pct, target)
	case details.TargetMet:
		reply.Message = fmt.Sprintf("%s %s, freed %s: usage %.1f%% -> %.1f%%", pastTense(req.OptimizationType), modelCount(len(details.Models)), bytesize.Format(freed), details.UsagePercentageBefore, pct)
	case details.SkippedPersistent > 0 && !req.Force:
		reply.Message = fmt.Sprintf("target %.1f%% not met (usage %.1f%%): %d persistent model allocations were kept; use force to include them", target, pct, details.SkippedPersistent)
	case len(details.SkippedModels) > 0:
		reply.Message = fmt.Sprintf("target %.1f%% not met (usage %.1f%%): %d models could not be moved whole (see skipped_models)", target, pct, len(details.SkippedModels))
	default:
		reply.Message = fmt.Sprintf("target %.1f%% not met (usage %.1f%%): no more model memory to %s", target, pct, req.OptimizationType)
	}
	return reply, nil
}

// modelCount says how many models, in the singular for one.
func modelCount(n int) string {
	if n == 1 {
		return "1 model"
	}
	return fmt.Sprintf("%d models", n)
}

func pastTense(optimizationType string) string {
	if optimizationType == subjects.OptimizeEvict {
		return "evicted"
	}
	if optimizationType == subjects.OptimizeRestore {
		return "restored"
	}
	return "offloaded"
}

// AheadBytes is what the pinned pool should hold ready for the device at
// pressure p (--pinned-ahead): nothing at normal pressure; at warning or
// above, what an offload of the least recently used models would move to
// pinned host memory to bring pressure back under warning (less the
// hysteresis), as ModelOptimize takes them: whole, the least recently used
// first (fewer bytes when the models hold less).
func (d *Device) AheadBytes(p subjects.Pressure) int64 {
	if p.Level == subjects.LevelNormal || p.Level == "" {
		return 0
	}
	under := d.cfg.Thresholds.Warning - d.cfg.Thresholds.Hysteresis
	shortfall := int64((p.PressureRatio - under) * float64(p.TotalBytes))
	if shortfall <= 0 {
		return 0
	}
	lru, _, _ := d.candidates(&subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload}, Who{})
	var n int64
	for _, c := range lru {
		if n >= shortfall {
			break
		}
		for _, a := range c.allocs {
			n += a.reserved()
		}
	}
	return n
}
