package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device"
)

// The host path benchmarks time, end to end at a NATS client (request to
// reply, or to completed), what users wait on when a GPU must be emptied:
// a transfer to the host, and a model's offload and restore. Each runs
// cold (a fresh worker with the pinned pool at its default, nothing
// page-locked: the memory is locked on the way) and warm (a fresh worker
// that pinned enough at start, --pinned-pool), and beside each, in the
// same iteration, the raw driver copy of the same bytes to and from
// page-locked memory allocated beforehand. They report medians and the
// ratios raw time / memworker time. BENCH_COLD_ONLY leaves the warm
// workers out.

// benchBytes reads a size from the environment, or def.
func benchBytes(b *testing.B, env string, def int64) int64 {
	if s := os.Getenv(env); s != "" {
		var n int64
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			b.Fatalf("%s %q: want bytes", env, s)
		}
		return n
	}
	return def
}

// hostPathWorker starts a fresh worker on one device of room bytes, cold
// or warm with prepin bytes pinned at start, its VRAM pool on virtual
// memory (in pieces of BENCH_VMM_PIECE bytes where set) unless BENCH_NO_VMM
// is set; stop ends it and closes its backend, so what its allocations
// held goes back as it would when a worker's process ends: a backend left
// open until the benchmark's end kept each transfer's 8 GiB page-locked,
// and each later cold transfer in the process registered slower (0.27 s
// for the first, 0.96 s for the fifth on the H100:
// docs/h100/round3/colddrift).
func hostPathWorker(b *testing.B, room, prepin int64, warm bool) (h *host, nc *nats.Conn, stop func()) {
	srv := startServer(b)
	ctx, cancel := context.WithCancel(context.Background())
	opts := []hostOpt{withDevices(1, room), withConfig(func(c *worker.Config) {
		if warm {
			c.PinnedPool = prepin
		}
		if s := os.Getenv("BENCH_VMM_PIECE"); s != "" {
			c.MapPiece = benchBytes(b, "BENCH_VMM_PIECE", 0)
		}
	})}
	if os.Getenv("BENCH_NO_VMM") != "" { // VRAM pools on cuMemAlloc segments
		opts = append(opts, withoutVMM())
	}
	h = startWorkerCtx(b, ctx, srv, "n1", opts...)
	nc = connect(b, srv)
	return h, nc, func() {
		cancel()
		h.wait()
		nc.Close()
		srv.Shutdown()
		if c, ok := h.dev.(interface{ Close() }); ok {
			c.Close()
		}
	}
}

// allocateModel allocates n allocations of size bytes for model m, with
// real content at their start (so no backend can copy nothing), and
// returns them with where they are.
func allocateModel(b *testing.B, h *host, nc *nats.Conn, n int, size int64) ([]string, []device.Location) {
	var ids []string
	var locs []device.Location
	for i := range n {
		var a subjects.Allocation
		call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: size, ModelID: "m"}, &a)
		loc, _, err := h.Locate("n1-gpu0", a.AllocationID)
		if err != nil {
			b.Fatal(err)
		}
		if err := h.dev.Write(context.Background(), loc, pattern(byte(i), min(size, MiB))); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, a.AllocationID)
		locs = append(locs, loc)
	}
	return ids, locs
}

// modelPieces is how many allocations the benchmarks' model has.
const modelPieces = 10

// modelBytes is the benchmarks' model: BENCH_MODEL_BYTES in all (default
// 64 MiB; the GPU pass uses 10 GiB), in modelPieces allocations of size.
func modelBytes(b *testing.B) (total, size int64) {
	size = benchBytes(b, "BENCH_MODEL_BYTES", 64*MiB) / modelPieces / MiB * MiB
	return size * modelPieces, size
}

// offloadAll offloads every model of n1-gpu0 with model_optimize, checks
// that total bytes moved, and returns the reply and the time it took.
func offloadAll(b *testing.B, nc *nats.Conn, total int64) (subjects.ModelOptimizeReply, time.Duration) {
	zero := 0.0
	var r subjects.ModelOptimizeReply
	start := time.Now()
	call(b, nc, subjects.ModelOptimize, "n1-gpu0", subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &zero}, &r)
	took := time.Since(start)
	if r.BytesMoved != total {
		b.Fatalf("offload moved %d of %d bytes: %+v", r.BytesMoved, total, r)
	}
	return r, took
}

// hostMemory is what the kernel says of the host's memory: transparent
// huge page events so far (/proc/vmstat: huge pages faulted in, faults
// that fell back to 4 KiB pages, direct compaction stalls) and the memory
// available (/proc/meminfo); zeros where the files are not there.
type hostMemory struct{ faulted, fellBack, stalls, availableKiB int64 }

func readHostMemory() (h hostMemory) {
	raw, _ := os.ReadFile("/proc/vmstat")
	mem, _ := os.ReadFile("/proc/meminfo")
	if _, after, ok := bytes.Cut(mem, []byte("MemAvailable:")); ok {
		f := bytes.Fields(after)
		if len(f) > 0 {
			h.availableKiB, _ = strconv.ParseInt(string(f[0]), 10, 64)
		}
	}
	for line := range bytes.Lines(raw) {
		name, val, _ := bytes.Cut(bytes.TrimSpace(line), []byte(" "))
		n, _ := strconv.ParseInt(string(val), 10, 64)
		switch string(name) {
		case "thp_fault_alloc":
			h.faulted = n
		case "thp_fault_fallback":
			h.fellBack = n
		case "compact_stall":
			h.stalls = n
		}
	}
	return h
}

// since says what happened to huge pages since h, and what was available
// then.
func (h hostMemory) since() string {
	now := readHostMemory()
	return fmt.Sprintf("huge pages faulted %d, fell back %d, compaction stalls %d; host memory available %.1f GiB before",
		now.faulted-h.faulted, now.fellBack-h.fellBack, now.stalls-h.stalls, float64(h.availableKiB)/(1<<20))
}

type medians map[string][]float64

func (m medians) add(name string, v float64) { m[name] = append(m[name], v) }

func (m medians) of(name string) float64 {
	v := slices.Clone(m[name])
	slices.Sort(v)
	return v[len(v)/2]
}

func (m medians) report(b *testing.B) {
	for name := range m {
		b.ReportMetric(m.of(name), name)
	}
}

// transferDone asks n1-gpu0 for req and waits until it completes; it
// returns the final status and the time from the request to completed.
func transferDone(b *testing.B, nc *nats.Conn, req subjects.TransferRequest) (subjects.TransferStatus, time.Duration) {
	start := time.Now()
	var st subjects.TransferStatus
	call(b, nc, subjects.Transfer, "n1-gpu0", req, &st)
	done := waitTransfer(b, nc, "n1-gpu0", st.TransferID)
	took := time.Since(start)
	if done.Status != subjects.TransferCompleted || done.Verified != req.Verify {
		b.Fatalf("transfer %+v", done)
	}
	return done, took
}

// BenchmarkOffloadRestore offloads a model of ten allocations
// (BENCH_MODEL_BYTES in all, default 64 MiB; the GPU pass uses 10 GiB)
// with model_optimize and restores it.
func BenchmarkOffloadRestore(b *testing.B) {
	total, size := modelBytes(b)
	m := medians{}
	for b.Loop() {
		for _, warm := range []bool{false, true} {
			if warm && os.Getenv("BENCH_COLD_ONLY") != "" {
				continue
			}
			mode := map[bool]string{false: "cold", true: "warm"}[warm]
			h, nc, stop := hostPathWorker(b, 2*total+GiB, total+64*MiB, warm)
			_, locs := allocateModel(b, h, nc, modelPieces, size)
			mem := readHostMemory()
			r, offload := offloadAll(b, nc, total)
			memOffload := mem.since()
			off := r
			m.add("offload-copy-GB/s-"+mode, r.CopyThroughputBytesPerSecond/1e9)
			start := time.Now()
			call(b, nc, subjects.ModelOptimize, "n1-gpu0", subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeRestore}, &r)
			restore := time.Since(start)
			if r.BytesMoved != total {
				b.Fatalf("restore moved %d of %d bytes: %+v", r.BytesMoved, total, r)
			}
			for i := range locs { // restored: new places
				locs[i], _, _ = h.Locate("n1-gpu0", r.OptimizationDetails.Models[0].AllocationIDs[i])
			}
			d2h, h2d := rawCopies(b, h.dev, locs, size)
			b.Logf("%s: offload %.3f s (setup %.3f, copying %.3f, releasing %.3f, %d bytes freed; %s), restore %.3f s (setup %.3f, copying %.3f); raw %.3f s and %.3f s",
				mode, offload.Seconds(), off.SetupSeconds, off.CopySeconds, off.ReleaseSeconds, off.MemoryFreedBytes, memOffload, restore.Seconds(), r.SetupSeconds, r.CopySeconds, d2h.Seconds(), h2d.Seconds())
			m.add("offload-GB/s-"+mode, float64(total)/offload.Seconds()/1e9)
			m.add("restore-GB/s-"+mode, float64(total)/restore.Seconds()/1e9)
			m.add("raw-D2H-GB/s", float64(total)/d2h.Seconds()/1e9)
			m.add("raw-H2D-GB/s", float64(total)/h2d.Seconds()/1e9)
			m.add("offload-ratio-"+mode, d2h.Seconds()/offload.Seconds())
			m.add("restore-ratio-"+mode, h2d.Seconds()/restore.Seconds())
			stop()
		}
	}
	m.report(b)
}

// BenchmarkOffloadAhead offloads a model of ten allocations
// (BENCH_MODEL_BYTES in all, default 64 MiB; the GPU pass uses 10 GiB)
// with model_optimize 2 s after the device's pressure reached warning, on a
// fresh worker whose pinned pool was empty: --pinned-ahead (the default)
// page-locked what the offload needs meanwhile. Beside it, the raw driver
// copy of the same bytes to page-locked memory allocated beforehand.
func BenchmarkOffloadAhead(b *testing.B) {
	total, size := modelBytes(b)
	m := medians{}
	for b.Loop() {
		h, nc, stop := hostPathWorker(b, 2*total, 0, false)
		_, locs := allocateModel(b, h, nc, modelPieces, size)
		d2h, _ := rawCopies(b, h.dev, locs, size)
		var u subjects.Usage
		call(b, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
		if u.PinnedPool.PinnedBytes != 0 {
			b.Fatalf("the pool holds %d bytes before pressure rose", u.PinnedPool.PinnedBytes)
		}
		call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: total * 8 / 10 / MiB * MiB}, nil)
		var pr subjects.Pressure
		if call(b, nc, subjects.GetPressure, "n1-gpu0", nil, &pr); pr.Level == subjects.LevelNormal {
			b.Fatalf("pressure %v is normal", pr.PressureRatio)
		}
		time.Sleep(2 * time.Second)
		call(b, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
		ahead := u.PinnedPool.AheadBytes
		r, offload := offloadAll(b, nc, total)
		b.Logf("offload %.3f s (setup %.3f, copying %.3f, releasing %.3f) with %d bytes pinned ahead; raw %.3f s",
			offload.Seconds(), r.SetupSeconds, r.CopySeconds, r.ReleaseSeconds, ahead, d2h.Seconds())
		m.add("offload-GB/s", float64(total)/offload.Seconds()/1e9)
		m.add("raw-D2H-GB/s", float64(total)/d2h.Seconds()/1e9)
		m.add("offload-ratio", d2h.Seconds()/offload.Seconds())
		m.add("ahead-bytes", float64(ahead))
		stop()
	}
	m.report(b)
}

// BenchmarkTransferToHost transfers one allocation (BENCH_TRANSFER_BYTES,
// default 64 MiB; the GPU pass uses 8 GiB) to pinned host memory, from the
// request to completed.
func BenchmarkTransferToHost(b *testing.B) {
	size := benchBytes(b, "BENCH_TRANSFER_BYTES", 64*MiB)
	m := medians{}
	for b.Loop() {
		for _, warm := range []bool{false, true} {
			if warm && os.Getenv("BENCH_COLD_ONLY") != "" {
				continue
			}
			mode := map[bool]string{false: "cold", true: "warm"}[warm]
			h, nc, stop := hostPathWorker(b, 2*size+GiB, size+64*MiB, warm)
			ids, locs := allocateModel(b, h, nc, 1, size)
			mem := readHostMemory()
			done, took := transferDone(b, nc, subjects.TransferRequest{AllocationID: ids[0], TargetAllocationType: subjects.Pinned})
			memTransfer := mem.since()
			d2h, _ := rawCopies(b, h.dev, locs, size)
			b.Logf("%s: %.3f s end to end: setup %.3f s, copy %.3f s (%s); raw %.3f s", mode, took.Seconds(), done.SetupSeconds, done.CopySeconds, memTransfer, d2h.Seconds())
			m.add("GB/s-"+mode, float64(size)/took.Seconds()/1e9)
			m.add("copy-GB/s-"+mode, done.CopyThroughputBytesPerSecond/1e9)
			m.add("setup-s-"+mode, done.SetupSeconds)
			m.add("raw-D2H-GB/s", float64(size)/d2h.Seconds()/1e9)
			m.add("ratio-"+mode, d2h.Seconds()/took.Seconds())
			stop()
		}
	}
	m.report(b)
}

// BenchmarkPeerTransfer transfers one allocation (BENCH_TRANSFER_BYTES,
// default 64 MiB; the GPU pass uses 8 GiB) to the host's second device,
// from the request to completed, beside one raw peer copy of the same
// bytes.
func BenchmarkPeerTransfer(b *testing.B) {
	size := benchBytes(b, "BENCH_TRANSFER_BYTES", 64*MiB)
	srv := startServer(b)
	h := startWorker(b, srv, "n1", withDevices(2, 2*size+GiB))
	nc := connect(b, srv)
	ids, locs := allocateModel(b, h, nc, 1, size)
	m := medians{}
	for b.Loop() {
		done, took := transferDone(b, nc, subjects.TransferRequest{AllocationID: ids[0], TargetDeviceID: "n1-gpu1"})
		raw := rawPeerCopy(b, h.dev, locs[0], 1, size)
		b.Logf("%.4f s end to end: setup %.4f s, copy %.4f s; raw %.4f s", took.Seconds(), done.SetupSeconds, done.CopySeconds, raw.Seconds())
		// At the worker: from the request's arrival to completed.
		worker := done.CompletedAt.Sub(done.CreatedAt)
		m.add("GB/s", float64(size)/took.Seconds()/1e9)
		m.add("worker-GB/s", float64(size)/worker.Seconds()/1e9)
		m.add("worker-ratio", raw.Seconds()/worker.Seconds())
		m.add("copy-GB/s", done.CopyThroughputBytesPerSecond/1e9)
		m.add("raw-GB/s", float64(size)/raw.Seconds()/1e9)
		m.add("ratio", raw.Seconds()/took.Seconds())
		call(b, nc, subjects.Deallocate, "n1-gpu1", subjects.DeallocateRequest{AllocationID: done.DestinationAllocationID}, nil)
	}
	m.report(b)
}
