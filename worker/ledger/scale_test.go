package ledger_test

import (
	"runtime"
	"testing"

	"github.com/memworker/memworker/subjects"
)

// TestMemoryPerAllocation measures the heap a live allocation costs.
func TestMemoryPerAllocation(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100,000 allocations")
	}
	d, _ := newDevice(t, 1<<40, nil)
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		allocate(t, d, subjects.AllocateRequest{SizeBytes: 4096, Purpose: "kv_cache", ModelID: "llama"})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per allocation", per)
	runtime.KeepAlive(d)
}
