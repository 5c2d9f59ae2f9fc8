package worker

import "time"

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
	}
	if len(freed) > 0 {
		w.recheck(g)
	}
}
