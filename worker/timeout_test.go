package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// TestOpTimeoutBoundsCopies: an operation that copies bytes under the
// device lock gives up after OpTimeout when the link stalls, and the
// allocation stays where it was, tracked.
func TestOpTimeoutBoundsCopies(t *testing.T) {
	w, b := testWorker(t, "timeout", func(c *Config) { c.OpTimeout = 50 * time.Millisecond })
	g := w.gpus[0]
	if err := actOn(t, w, subjects.Allocate, `{"data":{"size_bytes":1048576,"model_id":"m"}}`); err != nil {
		t.Fatal(err)
	}
	b.SetCopyDelay(time.Hour)
	start := time.Now()
	err := actOn(t, w, subjects.ModelOptimize, `{"data":{"optimization_type":"offload","target_usage_percentage":0,"model_id":"m"}}`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("offload over a stalled link: %v, want the deadline", err)
	}
	if waited := time.Since(start); waited > time.Minute {
		t.Errorf("gave up after %v", waited)
	}
	checkBooks(t, w, b)
	list := g.Allocations(context.Background(), ledger.Call{Who: ledger.Who{}, Now: time.Now()}, &subjects.AllocationsRequest{Limit: 10})
	if n := len(list.Allocations); n != 1 {
		t.Errorf("%d allocations tracked after the failed offload, want 1", n)
	}
	for _, a := range list.Allocations {
		if a.Offloaded {
			t.Errorf("allocation %s marked offloaded though its copy failed", a.AllocationID)
		}
	}
}
