package integration

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device"
)

// TestThePinnedPoolIsTheHosts: memory pinned ahead (--pinned-pool) serves
// transfers to the host from every device, again and again, without
// page-locking more; get_usage, get_status and /metrics show it, and the
// bytes arrive intact.
func TestThePinnedPoolIsTheHosts(t *testing.T) {
	srv := startServer(t)
	reg := prometheus.NewRegistry()
	h := startWorker(t, srv, "n1", withDevices(2, GiB), withConfig(func(c *worker.Config) {
		c.PinnedPool, c.PinnedMax, c.Metrics = 256*MiB, 512*MiB, reg
	}))
	nc := connect(t, srv)
	pool := func(dev string) subjects.PinnedPool {
		t.Helper()
		var u subjects.Usage
		call(t, nc, subjects.GetUsage, dev, nil, &u)
		if u.PinnedPool == nil {
			t.Fatalf("get_usage of %s has no pinned_pool", dev)
		}
		return *u.PinnedPool
	}
	want := subjects.PinnedPool{PinnedBytes: 256 * MiB, CachedBytes: 256 * MiB, PrepinBytes: 256 * MiB, MaxBytes: 512 * MiB}
	if got := pool("n1-gpu1"); got != want {
		t.Fatalf("at start: %+v, want %+v", got, want)
	}
	for round := range 2 {
		for i, dev := range []string{"n1-gpu0", "n1-gpu1"} {
			seed := byte(10*round + i)
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 24 * MiB}, &a)
			write(t, h, dev, a.AllocationID, seed)
			var st subjects.TransferStatus
			call(t, nc, subjects.Transfer, dev, subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Mode: subjects.ModeMove}, &st)
			done := waitTransfer(t, nc, dev, st.TransferID)
			if done.Status != subjects.TransferCompleted {
				t.Fatalf("transfer from %s: %+v", dev, done)
			}
			checkContent(t, h, dev, done.DestinationAllocationID, seed)
			if p := pool(dev); p.InUseBytes < 24*MiB || p.PinnedBytes != 256*MiB {
				t.Errorf("%s with its copy on the host: pool %+v, want 24 MiB of the 256 MiB in use", dev, p)
			}
			call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: done.DestinationAllocationID}, nil)
		}
	}
	var st subjects.StatusReply
	call(t, nc, subjects.GetStatus, "n1-gpu0", nil, &st)
	want.HitRatio = 1
	if st.Usage.PinnedPool == nil || *st.Usage.PinnedPool != want {
		t.Errorf("after four transfers, get_status's pool %+v, want %+v: all served from what was pinned at start", st.Usage.PinnedPool, want)
	}
	families := scrape(t, reg)
	node := map[string]string{"node": "n1"}
	for name, want := range map[string]float64{
		"memworker_pinned_pool_bytes":              256 << 20,
		"memworker_pinned_pool_in_use_bytes":       0,
		"memworker_pinned_pool_max_bytes":          512 << 20,
		"memworker_pinned_pool_requests_total":     4,
		"memworker_pinned_pool_hits_total":         4,
		"memworker_pinned_pool_locked_bytes_total": 256 << 20,
	} {
		if got := metricValue(t, families, name, node); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestOffloadRepliesWithItsPhases: model_optimize says how many bytes it
// moved and where the time went, as get_transfer does.
func TestOffloadRepliesWithItsPhases(t *testing.T) {
	t.Parallel() // a server and worker of its own: runs beside the other long ones
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 96 * MiB, ModelID: "m"}, &a)
	write(t, h, dev, a.AllocationID, 3)
	for _, op := range []string{subjects.OptimizeOffload, subjects.OptimizeRestore} {
		target := 0.0
		var r subjects.ModelOptimizeReply
		call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: op, TargetUsagePercentage: &target}, &r)
		if r.BytesMoved != 96*MiB || r.CopySeconds <= 0 || r.SetupSeconds < 0 || r.SetupSeconds+r.CopySeconds+r.ReleaseSeconds > r.EstimatedDurationSeconds {
			t.Errorf("%s: moved %d in setup %v + copy %v + release %v of %v s: want 96 MiB, phases within the whole", op, r.BytesMoved, r.SetupSeconds, r.CopySeconds, r.ReleaseSeconds, r.EstimatedDurationSeconds)
		}
		if r.ThroughputBytesPerSecond <= 0 || r.CopyThroughputBytesPerSecond < r.ThroughputBytesPerSecond {
			t.Errorf("%s: throughput %v end to end, %v copying: want the copy's at least the whole's", op, r.ThroughputBytesPerSecond, r.CopyThroughputBytesPerSecond)
		}
		checkContent(t, h, dev, a.AllocationID, 3)
	}
}

// TestDevicesShareThePinnedPoolAtOnce: transfers to the host from two
// devices at once, over and over, share the pool without losing track of a
// byte: at the end nothing is in use, and the pool holds what the backend
// has page-locked.
func TestDevicesShareThePinnedPoolAtOnce(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, GiB))
	nc := connect(t, srv)
	// Requests from the goroutines go through ask, which reports instead of
	// stopping the test (t.Fatal belongs to the test's own goroutine).
	ask := func(op subjects.Op, dev string, data, out any) bool {
		body, _ := subjects.NewRequest("", op, data)
		msg, err := nc.Request(subjects.Request(op, dev), body, 20*time.Second)
		if err == nil {
			_, err = subjects.DecodeReply(msg.Data, out)
		}
		if err != nil {
			t.Errorf("%s on %s: %v", op, dev, err)
		}
		return err == nil
	}
	var wg sync.WaitGroup
	for i, dev := range []string{"n1-gpu0", "n1-gpu1"} {
		wg.Go(func() {
			for round := range 8 {
				var a subjects.Allocation
				var st subjects.TransferStatus
				if !ask(subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: int64(8+round+i) * MiB}, &a) ||
					!ask(subjects.Transfer, dev, subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Mode: subjects.ModeMove}, &st) {
					return
				}
				for st.Status != subjects.TransferCompleted && st.Status != subjects.TransferFailed {
					time.Sleep(time.Millisecond)
					if !ask(subjects.GetTransfer, dev, subjects.GetTransferRequest{TransferID: st.TransferID}, &st) {
						return
					}
				}
				if st.Status != subjects.TransferCompleted || !ask(subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: st.DestinationAllocationID}, nil) {
					t.Errorf("transfer from %s: %+v", dev, st)
					return
				}
			}
		})
	}
	wg.Wait()
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
	p := u.PinnedPool
	if p == nil || p.PinnedBytes == 0 || p.InUseBytes != 0 || p.CachedBytes != p.PinnedBytes || p.PinnedBytes != heldBytes(h.dev, 0, device.Pinned) {
		t.Errorf("pool %+v, backend holds %d pinned: want nothing in use and the pool's bytes all the backend's", p, heldBytes(h.dev, 0, device.Pinned))
	}
}

// TestPinnedAheadOfAnOffload (--pinned-ahead): when pressure reaches
// warning, the host's pool page-locks what an offload of the least
// recently used models would need, before anyone asks; the offload then
// page-locks nothing; when pressure falls without an offload, the pool
// gives that memory back. Turned off, nothing is pinned ahead.
func TestPinnedAheadOfAnOffload(t *testing.T) {
	for _, tt := range []struct {
		name    string
		ahead   bool
		offload bool
	}{
		{"the offload finds its memory ready", true, true},
		{"pressure falls: the memory goes back", true, false},
		{"off", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t)
			reg := prometheus.NewRegistry()
			startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
				c.PinnedAhead, c.PinnedMax, c.Metrics = tt.ahead, 2*GiB, reg
			}))
			nc := connect(t, srv)
			dev := "n1-gpu0"
			pool := func() subjects.PinnedPool {
				t.Helper()
				u := status(t, nc, dev)
				return *u.PinnedPool
			}
			until := func(what string, ok func(subjects.PinnedPool) bool) subjects.PinnedPool {
				t.Helper()
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
					p := pool()
					if ok(p) {
						return p
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: the pool is %+v", what, p)
					}
				}
			}
			// The older model is the one an offload takes first.
			var old, recent, other subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 300 * MiB, ModelID: "old"}, &old)
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB, ModelID: "recent"}, &recent)
			if p := pool(); p.PinnedBytes != 0 || p.AheadBytes != 0 {
				t.Fatalf("at normal pressure: %+v, want nothing pinned", p)
			}
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 420 * MiB}, &other) // 920 MiB of 1 GiB: warning
			var pr subjects.Pressure
			if call(t, nc, subjects.GetPressure, dev, nil, &pr); pr.Level == subjects.LevelNormal {
				t.Fatalf("920 MiB of 1 GiB in use is %s", pr.Level)
			}
			if !tt.ahead {
				time.Sleep(100 * time.Millisecond) // what would have pinned ahead had time to
				if p := pool(); p.PinnedBytes != 0 {
					t.Fatalf("--pinned-ahead off: the pool pinned %+v", p)
				}
				return
			}
			p := until("pinned ahead of an offload of the oldest model", func(p subjects.PinnedPool) bool { return p.AheadBytes == old.ReservedBytes })
			if p.PinnedBytes != old.ReservedBytes || p.InUseBytes != 0 {
				t.Fatalf("pinned ahead: %+v, want the oldest model's %d bytes and no more", p, old.ReservedBytes)
			}
			if got := metricValue(t, scrape(t, reg), "memworker_pinned_pool_ahead_bytes", map[string]string{"node": "n1"}); got != float64(old.ReservedBytes) {
				t.Errorf("memworker_pinned_pool_ahead_bytes = %v, want %d", got, old.ReservedBytes)
			}
			if tt.offload {
				target := 80.0
				var r subjects.ModelOptimizeReply
				call(t, nc, subjects.ModelOptimize, dev, subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &target}, &r)
				if len(r.OptimizationDetails.Models) != 1 || r.OptimizationDetails.Models[0].ModelID != "old" {
					t.Fatalf("the offload moved %+v, want the oldest model", r.OptimizationDetails.Models)
				}
				p := until("the offload took what was ready", func(p subjects.PinnedPool) bool { return p.InUseBytes >= old.ReservedBytes })
				if p.PinnedBytes != old.ReservedBytes || p.HitRatio != 1 {
					t.Errorf("after the offload: %+v, want it served from what was pinned ahead (no more pinned, every request a hit)", p)
				}
				return
			}
			call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: other.AllocationID}, nil)
			until("pressure fell: the memory pinned ahead went back", func(p subjects.PinnedPool) bool { return p.PinnedBytes == 0 && p.AheadBytes == 0 })
		})
	}
}
