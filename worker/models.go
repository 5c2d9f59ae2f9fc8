package worker

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
// model's), narrowed to modelID when set. The caller holds mu.
func (g *gpu) models(modelID string) map[string][]*allocation {
	out := map[string][]*allocation{}
	for _, a := range g.sorted() {
		if a.ModelID != "" && (modelID == "" || a.ModelID == modelID) {
			out[a.ModelID] = append(out[a.ModelID], a)
		}
	}
	return out
}

func (w *Worker) modelStatus(_ context.Context, g *gpu, req *subjects.ModelStatusRequest) (any, error) {
	reply := subjects.ModelStatusReply{Models: []subjects.ModelMemory{}}
	for id, allocs := range g.models(req.ModelID) {
		m := subjects.ModelMemory{ModelID: id, DeviceID: g.id}
		for _, a := range allocs {
			m.Allocations++
			if a.Persistent {
				m.PersistentAllocations++
			}
			if a.kind == device.VRAM {
				m.ResidentBytes += a.ReservedBytes
			} else {
				m.OffloadedBytes += a.ReservedBytes
			}
			if a.LastUsedAt.After(m.LastUsedAt) {
				m.LastUsedAt = a.LastUsedAt
			}
		}
		reply.Models = append(reply.Models, m)
	}
	slices.SortFunc(reply.Models, func(a, b subjects.ModelMemory) int { return strings.Compare(a.ModelID, b.ModelID) })
	return reply, nil
}

// modelOptimize offloads or evicts the device-resident memory of the least
// recently used models, one model at a time, until device usage is at or
// below the target. Persistent allocations are touched only with force.
func (w *Worker) modelOptimize(ctx context.Context, g *gpu, req *subjects.ModelOptimizeRequest) (any, error) {
	start := time.Now().UTC()
	target := *req.TargetUsagePercentage
	u, err := g.usage(ctx, start)
	if err != nil {
		return nil, err
	}
	details := subjects.OptimizationDetails{
		OptimizationType:      req.OptimizationType,
		UsagePercentageBefore: u.UsagePercentage,
		TargetUsagePercentage: target,
		Models:                []subjects.ModelAction{},
	}
	type candidate struct {
		id       string
		allocs   []*allocation
		lastUsed time.Time
	}
	var lru []candidate
	for id, allocs := range g.models(req.ModelID) {
		c := candidate{id: id}
		for _, a := range allocs {
			if a.kind != device.VRAM || !a.idle() || (req.OptimizationType == subjects.OptimizeOffload && !a.relocatable()) {
				continue
			}
			if a.Persistent && !req.Force {
				details.SkippedPersistent++
				continue
			}
			c.allocs = append(c.allocs, a)
			if a.LastUsedAt.After(c.lastUsed) {
				c.lastUsed = a.LastUsedAt
			}
		}
		if len(c.allocs) > 0 {
			lru = append(lru, c)
		}
	}
	slices.SortFunc(lru, func(a, b candidate) int {
		if c := a.lastUsed.Compare(b.lastUsed); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})

	pct := u.UsagePercentage
	var freed int64
	for _, c := range lru {
		if pct <= target {
			break
		}
		act := subjects.ModelAction{ModelID: c.id, Action: req.OptimizationType}
		for _, a := range c.allocs {
			act.Bytes += a.ReservedBytes
			act.AllocationIDs = append(act.AllocationIDs, a.AllocationID)
			if req.OptimizationType == subjects.OptimizeEvict {
				err = g.free(a)
			} else {
				err = g.offload(ctx, a, start)
			}
			if err != nil {
				return nil, fmt.Errorf("%s of model %s: %w", req.OptimizationType, c.id, err)
			}
		}
		details.Models = append(details.Models, act)
		released, err := g.release(ctx)
		if err != nil {
			return nil, err
		}
		freed += released
		after, err := g.usage(ctx, time.Now().UTC())
		if err != nil {
			return nil, err
		}
		pct = after.UsagePercentage
	}
	if len(details.Models) > 0 {
		if after, err := g.usage(ctx, time.Now().UTC()); err == nil {
			w.observe(g, after)
		}
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
