package ledger

import (
	"context"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Status is get_status's reply: the device, its usage u (with purposes and
// telemetry added) and pressure p, and what the request includes.
func (d *Device) Status(ctx context.Context, req *subjects.StatusRequest, u subjects.Usage, p subjects.Pressure, who Who) *subjects.StatusReply {
	d.AddTelemetry(ctx, &u)
	u = d.WithPurposes(u, who)
	info := d.cfg.Info
	st := subjects.StatusReply{
		Device: subjects.DeviceInfo{
			DeviceID:                      d.id,
			Node:                          d.cfg.Node,
			Index:                         d.index,
			Name:                          info.Name,
			UUID:                          info.UUID,
			Backend:                       d.backend.Name(),
			ComputeCapability:             info.ComputeCapability,
			TotalBytes:                    u.TotalBytes,
			VirtualMemoryGranularityBytes: d.pools[device.VRAM].Granularity(),
		},
		Usage:           u,
		Pressure:        p,
		AllocationCount: len(d.allocs),
	}
	if !who.Operator() {
		st.AllocationCount = 0
		if f := d.tenants[who.Tenant]; f != nil {
			st.AllocationCount = f.allocations
		}
	}
	if req.IncludeUsageStats == nil || *req.IncludeUsageStats {
		st.UsageStats = poolStats(d.pools[device.VRAM].Stats())
	}
	if req.IncludeFragmentation {
		st.Fragmentation = fragmentation(d.pools[device.VRAM].Fragmentation())
	}
	if req.IncludeAllocations {
		st.Allocations = make([]subjects.Allocation, 0, min(len(d.allocs), subjects.MaxStatusAllocations))
		d.order.Ascend(func(a *allocation) bool {
			if !a.visibleTo(who) {
				return true
			}
			if len(st.Allocations) == subjects.MaxStatusAllocations {
				st.AllocationsTruncated = true
				return false
			}
			st.Allocations = append(st.Allocations, d.view(a))
			return true
		})
	}
	return &st
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
