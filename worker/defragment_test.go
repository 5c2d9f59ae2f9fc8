package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
)

// TestDefragmentLetsOtherRequestsThrough: a defragment of segments of
// their own (virtual memory off) copies a segment at a time and lets the
// device's other requests in between, so a status asked while it copies is
// answered before it ends.
func TestDefragmentLetsOtherRequestsThrough(t *testing.T) {
	w, b := testWorker(t, "defrag", func(c *Config) {
		host := sim.Default(1, 1<<30)
		host.DisableVMM = true
		c.Backend = sim.New(host)
	})
	var ids []string
	for range 64 {
		g := w.gpus[0]
		g.mu.Lock()
		data, err := w.ops()[subjects.Allocate](t.Context(), g, ledger.Call{Now: time.Now()}, []byte(`{"size_bytes":524288}`))
		g.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, data.(subjects.Allocation).AllocationID)
	}
	for i, id := range ids {
		if i%4 != 0 {
			if err := actOn(t, w, subjects.Deallocate, fmt.Sprintf(`{"data":{"allocation_id":%q}}`, id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.SetCopyDelay(20 * time.Millisecond)
	env, err := subjects.DecodeRequest([]byte(`{}`), subjects.Defragment)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.act(t.Context(), subjects.Defragment, w.gpus[0], &testRequest{}, env, w.ops()[subjects.Defragment], newReplyWriter())
		done <- err
	}()
	time.Sleep(30 * time.Millisecond) // into its first copy
	if err := actOn(t, w, subjects.GetUsage, `{}`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the status waited for the whole defragment (%v)", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkBooks(t, w, b)
}
