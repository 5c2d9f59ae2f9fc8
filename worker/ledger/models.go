package ledger

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// models groups the ledger by model_id (allocations without one are not a
// model's), narrowed to modelID when set.
func (d *Device) models(modelID string) map[string][]*allocation {
	out := map[string][]*allocation{}
	for _, a := range d.sorted() {
		if a.model != "" && (modelID == "" || a.model == modelID) {
			out[a.model] = append(out[a.model], a)
		}
	}
	return out
}

// ModelStatus reports the memory of each model (or of req.ModelID).
func (d *Device) ModelStatus(req *subjects.ModelStatusRequest) subjects.ModelStatusReply {
	reply := subjects.ModelStatusReply{Models: []subjects.ModelMemory{}}
	for id, allocs := range d.models(req.ModelID) {
		m := subjects.ModelMemory{ModelID: id, DeviceID: d.id}
		for _, a := range allocs {
			m.Allocations++
			if a.has(persistent) {
				m.PersistentAllocations++
			}
			if a.kind == device.VRAM {
				m.ResidentBytes += a.reserved()
			} else {
				m.OffloadedBytes += a.reserved()
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

// candidates lists the models whose resident allocations the request may
// offload or evict, and counts the persistent allocations it must skip.
func (d *Device) candidates(req *subjects.ModelOptimizeRequest) (lru []candidate, skippedPersistent int) {
	for id, allocs := range d.models(req.ModelID) {
		c := candidate{id: id}
		for _, a := range allocs {
			if a.kind != device.VRAM || !a.idle() || (req.OptimizationType == subjects.OptimizeOffload && !a.relocatable()) {
				continue
			}
			if a.has(persistent) && !req.Force {
				skippedPersistent++
				continue
			}
			c.allocs = append(c.allocs, a)
			if a.lastUsedAt().After(c.lastUsed) {
				c.lastUsed = a.lastUsedAt()
			}
		}
		if len(c.allocs) > 0 {
			lru = append(lru, c)
		}
	}
	leastRecentlyUsed(lru)
	return lru, skippedPersistent
}

// ModelOptimize offloads or evicts the device-resident memory of the least
// recently used models, one model at a time, until device usage is at or
// below the target. Persistent allocations are touched only with force.
func (d *Device) ModelOptimize(ctx context.Context, req *subjects.ModelOptimizeRequest) (subjects.ModelOptimizeReply, error) {
	start := time.Now().UTC()
	target := *req.TargetUsagePercentage
	u, err := d.Usage(ctx, start)
	if err != nil {
		return subjects.ModelOptimizeReply{}, err
	}
	lru, skipped := d.candidates(req)
	details := subjects.OptimizationDetails{
		OptimizationType:      req.OptimizationType,
		UsagePercentageBefore: u.UsagePercentage,
		TargetUsagePercentage: target,
		Models:                []subjects.ModelAction{},
		SkippedPersistent:     skipped,
	}
	pct := u.UsagePercentage
	var freed int64
	for _, c := range lru {
		if pct <= target {
			break
		}
		act := subjects.ModelAction{ModelID: c.id, Action: req.OptimizationType}
		for _, a := range c.allocs {
			act.Bytes += a.reserved()
			act.AllocationIDs = append(act.AllocationIDs, a.idString())
			if req.OptimizationType == subjects.OptimizeEvict {
				err = d.free(a)
			} else {
				err = d.offload(ctx, a, start)
			}
			if err != nil {
				return subjects.ModelOptimizeReply{}, fmt.Errorf("%s of model %s: %w", req.OptimizationType, c.id, err)
			}
		}
		details.Models = append(details.Models, act)
		released, err := d.release(ctx)
		if err != nil {
			return subjects.ModelOptimizeReply{}, err
		}
		freed += released
		after, err := d.Usage(ctx, time.Now().UTC())
		if err != nil {
			return subjects.ModelOptimizeReply{}, err
		}
		pct = after.UsagePercentage
	}
	details.UsagePercentageAfter = pct
	details.TargetMet = pct <= target
	reply := subjects.ModelOptimizeReply{
		Success:                  details.TargetMet,
		OptimizationStarted:      start,
		EstimatedDurationSeconds: time.Since(start).Seconds(),
		MemoryFreedBytes:         freed,
		OptimizationDetails:      details,
	}
	switch {
	case len(details.Models) == 0 && details.TargetMet:
		reply.Message = fmt.Sprintf("usage %.1f%% is already at or below the target %.1f%%", pct, target)
	case details.TargetMet:
		reply.Message = fmt.Sprintf("%s %d models, freed %d bytes: usage %.1f%% -> %.1f%%", pastTense(req.OptimizationType), len(details.Models), freed, details.UsagePercentageBefore, pct)
	case details.SkippedPersistent > 0 && !req.Force:
		reply.Message = fmt.Sprintf("target %.1f%% not met (usage %.1f%%): %d persistent model allocations were kept; use force to include them", target, pct, details.SkippedPersistent)
	default:
		reply.Message = fmt.Sprintf("target %.1f%% not met (usage %.1f%%): no more model memory to %s", target, pct, req.OptimizationType)
	}
	return reply, nil
}

func pastTense(optimizationType string) string {
	if optimizationType == subjects.OptimizeEvict {
		return "evicted"
	}
	return "offloaded"
}
