package worker

import (
	"time"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/worker/ledger"
)

// maxBatch bounds the allocation ids one expiry event carries (about 40
// bytes each: a batch stays far below a server's max payload).
const maxBatch = 1000

// expire frees g's allocations whose ttl has passed and announces them: one
// event per tenant and type, carrying up to maxBatch ids, so a burst of
// expiring leases is a few events, not one per lease.
func (w *Worker) expire(g *gpu, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	freed, err := g.Expire(now)
	if err != nil {
		w.log.Error("freeing expired allocations", "device", g.ID(), "err", err)
	}
	for _, e := range batches(freed) {
		e.DeviceID, e.Node, e.ObservedAt = g.ID(), w.cfg.Node, now.UTC()
		w.announceAllocation(events.TypeAllocationExpired, e)
	}
	if len(freed) > 0 {
		w.log.Debug("allocations expired", "device", g.ID(), "count", len(freed))
		w.recheck(g)
	}
}

// batches groups expired allocations by tenant and type, in order, into
// events of at most maxBatch ids each.
func batches(freed []ledger.Expired) []events.Allocation {
	var out []events.Allocation
	open := map[[2]string]int{} // tenant and type -> index in out of its open batch
	for _, e := range freed {
		k := [2]string{e.Tenant, string(e.AllocationType)}
		i, ok := open[k]
		if !ok || len(out[i].AllocationIDs) == maxBatch {
			out = append(out, events.Allocation{AllocationID: e.AllocationID, Tenant: e.Tenant,
				AllocationType: e.AllocationType, ExpiresAt: e.ExpiresAt})
			i = len(out) - 1
			open[k] = i
		}
		out[i].AllocationIDs = append(out[i].AllocationIDs, e.AllocationID)
		out[i].SizeBytes += e.SizeBytes
	}
	return out
}
