//go:build cuda

package cuda_test

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/device/cuda"
)

// BenchmarkHostVMM asks whether host memory the driver allocates,
// page-locks and maps itself (cuMemCreate with a host location, cuMemMap,
// cuMemSetAccess for the device and the CPU) is had faster than
// registering memory the process mapped, and whether it stops a copy on
// the same context as registering does (BenchmarkRegisterBesideCopy:
// registering drops the copier from 55 GB/s to 1-7). BENCH_LOAD_PIN_BYTES
// (default 4 GiB) in 64 MiB chunks on 1 to 16 threads, each step alone
// and beside a copier (spin waits, primary context):
//   - map: reserve untimed, then create, map and grant access per chunk;
//   - unmap: unmap (and so free) what map made;
//   - register: cuMemHostRegister of fresh huge-page memory faulted in
//     untimed (the pinned segments' way, for the same run's comparison);
//   - hostalloc: cuMemHostAlloc per chunk.
//
// BENCH_HOST_NUMA picks the host location: a NUMA node (default 0), or -1
// for CU_MEM_LOCATION_TYPE_HOST.
func BenchmarkHostVMM(b *testing.B) {
	n := envBytes(b, "BENCH_LOAD_PIN_BYTES", 4<<30)
	const chunk = 64 << 20
	lockedContext(b, 0)
	node := hostNode(b)
	host, numa := cuda.HostVMMSupport(0)
	g, err := cuda.HostVMMGranularity(node)
	b.Logf("host virtual memory: supported %d, on a NUMA node %d; granularity %d bytes (%v); node %d", host, numa, g, err, node)
	for _, step := range []string{"map", "unmap", "register", "hostalloc"} {
		for _, copying := range []bool{false, true} {
			for _, threads := range []int{1, 4, 8, 16} {
				b.Run(fmt.Sprintf("%s/copying-%v/threads-%d", step, copying, threads), func(b *testing.B) {
					hostVMMStep(b, step, copying, threads, n, chunk, node)
				})
			}
		}
	}
}

func hostNode(b *testing.B) int {
	s := os.Getenv("BENCH_HOST_NUMA")
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// hostAt is the CPU's pointer to host memory mapped at address a.
func hostAt(a uint64) unsafe.Pointer { return unsafe.Add(nil, uintptr(a)) }

func hostVMMStep(b *testing.B, step string, copying bool, threads int, n, chunk int64, node int) {
	lockedContext(b, 0)
	var landed atomic.Int64
	if copying {
		stop, done := startCopier(b, &landed)
		defer func() { close(stop); <-done }()
	}
	current := func(int) error { return makeCurrent() }
	mapAll := func(base uint64, threads int) error {
		return onOffsets(current, threads, n, chunk, func(off, l int64) error { return cuda.HostVMMMap(base+uint64(off), l, node, 0) })
	}
	unmapAll := func(base uint64) error {
		return onOffsets(current, 16, n, chunk, func(off, l int64) error { return cuda.UnmapPiece(base+uint64(off), l) })
	}
	b.SetBytes(n)
	var window time.Duration
	var copied int64
	for b.Loop() {
		b.StopTimer()
		var base uint64
		var mem []byte
		ptrs := make([]unsafe.Pointer, n/chunk)
		var err error
		switch step {
		case "map", "unmap":
			if base, err = cuda.Reserve(n, 2<<20); err != nil {
				b.Fatal(err)
			}
			if step == "unmap" {
				if err := mapAll(base, 16); err != nil {
					b.Fatal(err)
				}
			}
		case "register":
			mem = freshMapping(b, n, syscall.MADV_HUGEPAGE)
			_ = onThreads(mem, int(chunk), 16, populate)
		}
		c1, t1 := landed.Load(), time.Now()
		b.StartTimer()
		switch step {
		case "map":
			err = mapAll(base, threads)
		case "unmap":
			err = unmapAll(base)
		case "register":
			err = onThreads(mem, int(chunk), threads, register)
		case "hostalloc":
			err = onOffsets(current, threads, n, chunk, func(off, l int64) (err error) {
				ptrs[off/chunk], err = cuda.HostAlloc(l)
				return err
			})
		}
		b.StopTimer()
		copied += landed.Load() - c1
		window += time.Since(t1)
		if err != nil {
			b.Fatal(err)
		}
		switch step {
		case "map":
			// The CPU reads and writes it.
			for off := int64(0); off < n; off += 1 << 20 {
				p := (*byte)(hostAt(base + uint64(off)))
				*p = byte(off >> 20)
				if *p != byte(off>>20) {
					b.Fatalf("host memory at +%d does not keep what the CPU wrote", off)
				}
			}
			if err := unmapAll(base); err != nil {
				b.Fatal(err)
			}
			_ = cuda.Unreserve(base, n)
		case "unmap":
			_ = cuda.Unreserve(base, n)
		case "register":
			for off := int64(0); off < n; off += chunk {
				_ = cuda.HostUnregister(unsafe.Pointer(&mem[off]))
			}
			_ = syscall.Munmap(mem)
		case "hostalloc":
			for _, p := range ptrs {
				if p != nil {
					_ = cu.MemFreeHost(p)
				}
			}
		}
		b.StartTimer()
	}
	if copying {
		b.ReportMetric(float64(copied)/window.Seconds()/1e9, "copy-GB/s")
	}
}

// startCopier runs pipelinedLoop (spin waits) until stop is closed; done
// is closed when it has ended.
func startCopier(b *testing.B, landed *atomic.Int64) (stop, done chan struct{}) {
	stop, done = make(chan struct{}), make(chan struct{})
	started := make(chan error)
	go func() {
		defer close(done)
		pipelinedLoop("spin", landed, started, stop)
	}()
	if err := <-started; err != nil {
		b.Fatal(err)
	}
	return stop, done
}

// BenchmarkColdVMMD2H is BenchmarkColdD2H's cold copy with host memory
// from virtual memory management instead of registered segments:
// BENCH_PIN_BYTES (default 8 GiB) of device memory copied to host memory
// mapped while the copy runs, 64 MiB pieces, each queued once its piece
// is mapped (by 4, 8 or 16 threads, in address order), four in flight;
// the address space is reserved inside the timing, and the host memory
// unmapped outside it. raw-warm copies the same pieces the same way into
// memory allocated pinned beforehand. Each iteration's time is logged (the
// first of a fresh machine is its first touch of that memory), and the
// copy's content checked on the CPU.
func BenchmarkColdVMMD2H(b *testing.B) {
	n := envBytes(b, "BENCH_PIN_BYTES", 8<<30)
	const piece = 64 << 20
	lockedContext(b, 0)
	node := hostNode(b)
	src, err := cu.MemAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cu.MemFree(src) }()
	st, err := cu.MakeStream(cu.NonBlocking)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Destroy() }()
	fill := func(i int) byte {
		p := byte(i*37 + 11)
		if err := cu.MemsetD8(src, p, n); err != nil {
			b.Fatal(err)
		}
		if err := cu.Synchronize(); err != nil {
			b.Fatal(err)
		}
		return p
	}
	check := func(at func(off int64) unsafe.Pointer, p byte) {
		for off := int64(0); off < n; off += 4 << 20 {
			if got := *(*byte)(at(off)); got != p {
				b.Fatalf("byte at +%d is %#x after the copy, want %#x", off, got, p)
			}
		}
	}
	b.Run("raw-warm", func(b *testing.B) {
		lockedContext(b, 0)
		dst, err := cuda.HostAlloc(n)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cu.MemFreeHost(dst) }()
		at := func(off int64) unsafe.Pointer { return unsafe.Add(dst, off) }
		b.SetBytes(n)
		i := 0
		for b.Loop() {
			b.StopTimer()
			p := fill(i)
			b.StartTimer()
			if err := copyPieces(st, src, n, piece, at, nil); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			check(at, p)
			i++
			b.StartTimer()
		}
	})
	for _, threads := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("vmm-threads-%d", threads), func(b *testing.B) {
			lockedContext(b, 0)
			b.SetBytes(n)
			i := 0
			for b.Loop() {
				b.StopTimer()
				p := fill(i)
				t0 := time.Now()
				b.StartTimer()
				base, err := cuda.Reserve(n, 2<<20)
				if err != nil {
					b.Fatal(err)
				}
				ready := make([]chan struct{}, (n+piece-1)/piece)
				for k := range ready {
					ready[k] = make(chan struct{})
				}
				mapped := make(chan error, 1)
				go func() {
					mapped <- onOffsets(func(int) error { return makeCurrent() }, threads, n, piece, func(off, l int64) error {
						defer close(ready[off/piece])
						return cuda.HostVMMMap(base+uint64(off), l, node, 0)
					})
				}()
				at := func(off int64) unsafe.Pointer { return hostAt(base + uint64(off)) }
				err = copyPieces(st, src, n, piece, at, func(k int) { <-ready[k] })
				if merr := <-mapped; merr != nil {
					b.Fatal(merr)
				}
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.Logf("iteration %d: %.3f s", i, time.Since(t0).Seconds())
				check(at, p)
				_ = onOffsets(func(int) error { return makeCurrent() }, 16, n, piece, func(off, l int64) error { return cuda.UnmapPiece(base+uint64(off), l) })
				_ = cuda.Unreserve(base, n)
				i++
				b.StartTimer()
			}
		})
	}
}

// copyPieces copies n bytes at src to dst(off) in pieces queued on st,
// four in flight, waiting with wait(k) (if not nil) before queuing piece
// k; it returns when every piece has landed.
func copyPieces(st cu.Stream, src cu.DevicePtr, n, piece int64, dst func(off int64) unsafe.Pointer, wait func(k int)) error {
	var flying []cu.Event
	land := func() error {
		ev := flying[0]
		flying = flying[1:]
		err := ev.Synchronize()
		_ = cu.DestroyEvent(&ev)
		return err
	}
	var first error
	for off := int64(0); off < n; off += piece {
		if wait != nil {
			wait(int(off / piece))
		}
		if err := cu.MemcpyDtoHAsync(dst(off), src+cu.DevicePtr(off), min(piece, n-off), st); err != nil {
			first = err
			break
		}
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			first = err
			break
		}
		_ = ev.Record(st)
		flying = append(flying, ev)
		if len(flying) > 4 {
			if err := land(); err != nil && first == nil {
				first = err
			}
		}
	}
	for len(flying) > 0 {
		if err := land(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
