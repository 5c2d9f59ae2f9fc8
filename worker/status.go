package worker

import (
	"context"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

func (w *Worker) getUsage(ctx context.Context, g *gpu, _ *subjects.UsageRequest) (any, error) {
	u, err := g.usage(ctx, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	w.observe(g, u)
	g.addTelemetry(ctx, &u)
	return g.withPurposes(u), nil
}

func (w *Worker) getPressure(ctx context.Context, g *gpu, _ *subjects.PressureRequest) (any, error) {
	u, err := g.usage(ctx, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	return w.observe(g, u), nil
}

func (w *Worker) getStatus(ctx context.Context, g *gpu, req *subjects.StatusRequest) (any, error) {
	u, err := g.usage(ctx, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	p := w.observe(g, u)
	g.addTelemetry(ctx, &u)
	u = g.withPurposes(u)
	st := subjects.StatusReply{
		Device: subjects.DeviceInfo{
			DeviceID:          g.id,
			Node:              w.cfg.Node,
			Index:             g.index,
			Name:              g.info.Name,
			UUID:              g.info.UUID,
			Backend:           w.cfg.Backend.Name(),
			ComputeCapability: g.info.ComputeCapability,
			TotalBytes:        u.TotalBytes,
		},
		Usage:           u,
		Pressure:        p,
		AllocationCount: len(g.ledger),
	}
	if req.IncludeUsageStats == nil || *req.IncludeUsageStats {
		st.UsageStats = poolStats(g.pools[device.VRAM].Stats())
	}
	if req.IncludeFragmentation {
		st.Fragmentation = fragmentation(g.pools[device.VRAM].Fragmentation())
	}
	if req.IncludeAllocations {
		all := g.list(func(*allocation) bool { return true })
		st.AllocationsTruncated = len(all) > subjects.MaxStatusAllocations
		st.Allocations = all[:min(len(all), subjects.MaxStatusAllocations)]
	}
	return &st, nil
}

func poolStats(s alloc.Stats) *subjects.PoolStats {
	return &subjects.PoolStats{
		AllocatedBytes:     s.AllocatedBytes,
		ReservedBytes:      s.ReservedBytes,
		PeakAllocatedBytes: s.PeakAllocatedBytes,
		PeakReservedBytes:  s.PeakReservedBytes,
		Segments:           s.Segments,
		ActiveBlocks:       s.ActiveBlocks,
		CachedBlocks:       s.CachedBlocks,
		AllocRequests:      s.AllocRequests,
		CacheHits:          s.CacheHits,
		CacheHitRatio:      s.CacheHitRatio(),
		SegmentAllocs:      s.SegmentAllocs,
		SegmentFrees:       s.SegmentFrees,
		OOMRetries:         s.OOMRetries,
	}
}

func fragmentation(f alloc.Fragmentation) *subjects.Fragmentation {
	return &subjects.Fragmentation{
		FragmentationRatio:    f.Ratio,
		FreeBytes:             f.FreeBytes,
		LargestFreeBlockBytes: f.LargestFree,
		FreeBlocks:            f.FreeBlocks,
		Segments:              f.Segments,
	}
}
