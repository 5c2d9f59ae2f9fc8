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

// Optimize runs the requested strategies in order, each measured against
// device truth, and stops once usage is at or below the target.
func (d *Device) Optimize(ctx context.Context, req *subjects.OptimizeRequest) (subjects.OptimizeReply, error) {
	now := time.Now().UTC()
	u, err := d.Usage(ctx, now)
	if err != nil {
		return subjects.OptimizeReply{}, err
	}
	reply := subjects.OptimizeReply{DryRun: req.DryRun, Actions: []subjects.OptimizeAction{}, UsagePercentageBefore: u.UsagePercentage}
	met := func(pct float64) bool { return req.TargetUsagePercentage > 0 && pct <= req.TargetUsagePercentage }
	projected := u.UsagePercentage
	for _, s := range req.Strategies {
		if met(projected) {
			break
		}
		var act subjects.OptimizeAction
		var err error
		switch s {
		case subjects.StrategyFreeExpired:
			act, err = d.freeExpired(now, req.DryRun)
		case subjects.StrategyReleaseCached:
			act, err = d.releaseCached(ctx, req.DryRun)
		case subjects.StrategyDefragment:
			act, err = d.defragmentAction(ctx, req.DryRun)
		case subjects.StrategyOffloadIdle:
			act, err = d.offloadIdle(ctx, now, req, projected, u.TotalBytes)
		}
		if err != nil {
			return subjects.OptimizeReply{}, fmt.Errorf("optimize %s: %w", s, err)
		}
		reply.Actions = append(reply.Actions, act)
		reply.BytesFreed += act.BytesFreed
		if u.TotalBytes > 0 {
			projected = u.UsagePercentage - float64(reply.BytesFreed)/float64(u.TotalBytes)*100
		}
	}
	reply.UsagePercentageAfter = projected
	if !req.DryRun {
		after, err := d.Usage(ctx, time.Now().UTC())
		if err != nil {
			return subjects.OptimizeReply{}, err
		}
		reply.UsagePercentageAfter = after.UsagePercentage
	}
	reply.TargetMet = req.TargetUsagePercentage == 0 || reply.UsagePercentageAfter <= req.TargetUsagePercentage
	return reply, nil
}

// freeExpired frees allocations whose ttl has passed (the expiry loop does
// it within a second; this does it now). Their blocks stay cached, so the
// bytes count as freed in the pool, not on the device.
func (d *Device) freeExpired(now time.Time, dryRun bool) (subjects.OptimizeAction, error) {
	act := subjects.OptimizeAction{Strategy: subjects.StrategyFreeExpired}
	for _, a := range d.sorted() {
		if !a.expiredAt(now) || !a.idle() {
			continue
		}
		act.AllocationIDs = append(act.AllocationIDs, a.idString())
		if !dryRun {
			if err := d.free(a); err != nil {
				return act, err
			}
		}
	}
	act.Description = fmt.Sprintf("free %d expired allocations", len(act.AllocationIDs))
	return act, nil
}

// releaseCached returns the VRAM pool's empty segments to the device.
func (d *Device) releaseCached(ctx context.Context, dryRun bool) (subjects.OptimizeAction, error) {
	act := subjects.OptimizeAction{Strategy: subjects.StrategyReleaseCached}
	f := d.pools[device.VRAM].Fragmentation()
	if dryRun {
		act.BytesFreed = f.ReleasableBytes
	} else {
		n, err := d.release(ctx)
		if err != nil {
			return act, err
		}
		act.BytesFreed = n
	}
	act.Description = fmt.Sprintf("return %d bytes of cached free memory to the device", act.BytesFreed)
	return act, nil
}

// defragmentAction compacts the pool, or for a dry run reports what the
// plan would release.
func (d *Device) defragmentAction(ctx context.Context, dryRun bool) (subjects.OptimizeAction, error) {
	act := subjects.OptimizeAction{Strategy: subjects.StrategyDefragment}
	if dryRun {
		f := d.pools[device.VRAM].Fragmentation()
		segs, bytes := d.pools[device.VRAM].PlanCompaction(movableIn(d.owners()))
		segs, bytes = segs+f.EmptySegments, bytes+f.ReleasableBytes
		act.BytesFreed = bytes
		act.Description = fmt.Sprintf("move live blocks out of %d sparsely used segments and release them", segs)
		return act, nil
	}
	c, _, err := d.compact(ctx, nil)
	if err != nil {
		return act, err
	}
	act.BytesFreed = c.BytesReleased
	act.Description = fmt.Sprintf("moved %d blocks (%d bytes), released %d segments", len(c.Moves), c.BytesMoved, c.SegmentsReleased)
	return act, nil
}

// offloadIdle moves allocations unused for req.IdleSeconds to pinned host
// memory, least recently used first, until the target is met; then it
// releases the VRAM they held. Persistent allocations stay on the device.
func (d *Device) offloadIdle(ctx context.Context, now time.Time, req *subjects.OptimizeRequest, pct float64, total int64) (subjects.OptimizeAction, error) {
	act := subjects.OptimizeAction{Strategy: subjects.StrategyOffloadIdle}
	cutoff := now.Add(-time.Duration(req.IdleSeconds * float64(time.Second)))
	var idle []*allocation
	for _, a := range d.allocs {
		if a.kind == device.VRAM && !a.has(persistent) && a.relocatable() && a.allocType() == subjects.VRAM && a.lastUsedAt().Before(cutoff) {
			idle = append(idle, a)
		}
	}
	slices.SortFunc(idle, func(a, b *allocation) int {
		if c := a.lastUsedAt().Compare(b.lastUsedAt()); c != 0 {
			return c
		}
		return strings.Compare(a.idString(), b.idString())
	})
	var moved int64
	for _, a := range idle {
		if req.TargetUsagePercentage > 0 && total > 0 && pct-float64(moved)/float64(total)*100 <= req.TargetUsagePercentage {
			break
		}
		if !req.DryRun {
			if err := d.offload(ctx, a, now); err != nil {
				return act, err
			}
		}
		act.AllocationIDs = append(act.AllocationIDs, a.idString())
		moved += a.block.Size()
	}
	act.BytesFreed = moved
	if !req.DryRun {
		if _, err := d.release(ctx); err != nil {
			return act, err
		}
	}
	act.Description = fmt.Sprintf("offload %d allocations idle for %gs (%d bytes) to pinned host memory", len(act.AllocationIDs), req.IdleSeconds, moved)
	return act, nil
}
