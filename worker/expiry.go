package worker

import (
	"time"

	"github.com/memworker/memworker/events"
)

// expire frees g's allocations whose ttl has passed.
func (w *Worker) expire(g *gpu, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	freed, err := g.Expire(now)
	if err != nil {
		w.log.Error("freeing expired allocations", "device", g.ID(), "err", err)
	}
	for _, e := range freed {
		w.log.Debug("allocation expired", "device", g.ID(), "allocation_id", e.AllocationID, "bytes", e.Bytes)
		w.announceAllocation(events.TypeAllocationExpired, events.Allocation{
			DeviceID: g.ID(), Node: w.cfg.Node, AllocationID: e.AllocationID, Tenant: e.Tenant,
			AllocationType: e.AllocationType, SizeBytes: e.SizeBytes, ExpiresAt: e.ExpiresAt, ObservedAt: now.UTC(),
		})
	}
	if len(freed) > 0 {
		w.recheck(g)
	}
}
