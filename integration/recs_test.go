package integration

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestRecommendationsAreReadyToSend builds a device with every problem the
// recommendations know, sends each suggested action back unchanged, and
// checks each one fixes what it was about. On virtual memory there is no
// defragment to recommend: release_cached gives the free chunks back
// without moving anything.
func TestRecommendationsAreReadyToSend(t *testing.T) {
	t.Run("segments", func(t *testing.T) { testRecommendations(t, false) })
	t.Run("vmm", func(t *testing.T) { testRecommendations(t, true) })
}

func testRecommendations(t *testing.T, vmm bool) {
	srv := startServer(t)
	opts := []hostOpt{withDevices(1, GiB), withConfig(func(c *worker.Config) {
		c.ExpiryInterval = time.Hour // leave expired allocations to optimize
		c.IdleAfter = time.Millisecond
		c.AutoRelease = false // leave the cache to release_cached
		c.CacheHold = -1
	})}
	if !vmm {
		opts = append(opts, withoutVMM())
	}
	h := startWorker(t, srv, "n1", opts...)
	if vmm {
		h.needsVMM(t)
	}
	nc := connect(t, srv)
	dev := "n1-gpu0"

	var recs subjects.OptimizationRecsReply
	call(t, nc, subjects.OptimizationRecs, dev, nil, &recs)
	if len(recs.Recommendations) != 0 {
		t.Fatalf("an idle device has recommendations: %+v", recs)
	}

	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 680 * MiB, ModelID: "m"}, nil)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 4 * MiB, TTLSeconds: 0.001}, nil)
	var cached subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 64 * MiB}, &cached)
	var frag []string
	for i := 0; i < 24; i++ {
		var a subjects.Allocation
		call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 3 * MiB, Persistent: i%6 == 0}, &a)
		if i%6 != 0 {
			frag = append(frag, a.AllocationID)
		}
	}
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: append(frag, cached.AllocationID)}, nil)
	// Another process takes most of the rest: what nobody can get passes
	// the warning threshold (the cache counts as available).
	h.external(t, 0, 200*MiB)
	time.Sleep(5 * time.Millisecond) // everything is now idle and the ttl has passed

	call(t, nc, subjects.OptimizationRecs, dev, nil, &recs)
	if recs.Level == subjects.LevelNormal {
		t.Fatalf("setup: pressure %s at usage %v, want the device under pressure", recs.Level, recs.UsageRatio)
	}
	seen := map[string]subjects.Recommendation{}
	for i, r := range recs.Recommendations {
		seen[r.Type] = r
		if r.Message == "" || r.EstimatedSavingsBytes <= 0 || !r.SuggestedAction.Op.Valid() {
			t.Errorf("recommendation %+v", r)
		}
		if i > 0 && costRank(r.Type) < costRank(recs.Recommendations[i-1].Type) {
			t.Errorf("recommendations not sorted by cost (no copy, copy, offload): %+v", recs.Recommendations)
		}
	}
	for _, want := range []string{"free_expired", "release_cached", "defragment", "offload_idle", "offload_models"} {
		if _, ok := seen[want]; ok == (vmm && want == "defragment") {
			t.Errorf("%s recommended: %v, among %+v", want, ok, recs.Recommendations)
		}
	}
	if seen["offload_models"].Severity != subjects.SeverityCritical && seen["offload_models"].Severity != subjects.SeverityWarning {
		t.Errorf("offload_models under pressure has severity %s", seen["offload_models"].Severity)
	}

	for _, r := range recs.Recommendations {
		data, _ := json.Marshal(r.SuggestedAction.Data)
		body := []byte(`{"data":` + string(data) + `}`)
		msg := request(t, nc, r.SuggestedAction.Op, dev, body)
		if _, err := subjects.DecodeReply(msg.Data, nil); err != nil {
			t.Fatalf("%s: sending %s %s: %v", r.Type, r.SuggestedAction.Op, data, err)
		}
		var again subjects.OptimizationRecsReply
		call(t, nc, subjects.OptimizationRecs, dev, nil, &again)
		for _, still := range again.Recommendations {
			if still.Type == r.Type {
				t.Errorf("after sending its action, %s is still recommended: %+v", r.Type, still)
			}
		}
	}
	var p subjects.Pressure
	call(t, nc, subjects.GetPressure, dev, nil, &p)
	if p.Level != subjects.LevelNormal {
		t.Errorf("after every recommendation: pressure %+v", p)
	}
	checkLedger(t, nc, h, dev, 0)
}

func costRank(typ string) int {
	return map[string]int{"free_expired": 0, "release_cached": 0, "defragment": 1, "offload_idle": 2, "offload_models": 2}[typ]
}
