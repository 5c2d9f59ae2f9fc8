//go:build cuda

package cuda_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/device/cuda"
)

// BenchmarkFreshPages takes page-locking fresh host memory apart, as the
// pinned segments do it (host.go), to find what bounds it: BENCH_PIN_BYTES
// (default 1 GiB) of a fresh mapping, in transparent huge pages or 4 KiB
// pages, on 1, 8 or 16 threads each taking 128 MiB chunks in turn, is
//
//   - populate: faulted in with MADV_POPULATE_WRITE (what the segments do);
//   - touch: faulted in by an atomic add of zero to every 4 KiB (safe on
//     memory in use, as the segments' is);
//   - register: cuMemHostRegister of memory faulted in already (untimed);
//   - both: populate and register each chunk, as the segments do;
//   - both-touch: touch and register each chunk.
//
// scripts/fault-probe.py is a second tool's figure for faulting in.
//
// Each iteration maps fresh memory; unmapping is not timed.
func BenchmarkFreshPages(b *testing.B) {
	n := pinBytes(b)
	const chunk = 128 << 20
	for _, pages := range []string{"huge", "small"} {
		for _, step := range []string{"populate", "touch", "register", "both", "both-touch"} {
			for _, threads := range []int{1, 4, 8, 16} {
				b.Run(fmt.Sprintf("%s/%s/threads-%d", pages, step, threads), func(b *testing.B) {
					b.SetBytes(n)
					for b.Loop() {
						b.StopTimer()
						advice := syscall.MADV_HUGEPAGE
						if pages == "small" {
							advice = syscall.MADV_NOHUGEPAGE
						}
						mem := freshMapping(b, n, advice)
						if step == "register" {
							_ = onThreads(mem, chunk, threads, populate)
						}
						b.StartTimer()
						err := onThreads(mem, chunk, threads, func(c []byte) error {
							p := unsafe.Pointer(&c[0])
							switch step {
							case "populate":
								return populate(c)
							case "touch":
								for off := 0; off < len(c); off += 4096 {
									atomic.AddUint32((*uint32)(unsafe.Add(p, off)), 0)
								}
							case "both-touch":
								for off := 0; off < len(c); off += 4096 {
									atomic.AddUint32((*uint32)(unsafe.Add(p, off)), 0)
								}
								return cuda.HostRegister(p, int64(len(c)))
							case "register":
								return register(c)
							case "both":
								return both(c)
							}
							return nil
						})
						b.StopTimer()
						if err != nil {
							b.Fatal(err)
						}
						if step == "register" || step == "both" || step == "both-touch" {
							for off := 0; off < len(mem); off += chunk {
								_ = cuda.HostUnregister(unsafe.Pointer(&mem[off]))
							}
						}
						_ = syscall.Munmap(mem)
						b.StartTimer()
					}
				})
			}
		}
	}
}

// makeCurrent makes device 0's primary context current on this thread,
// which the caller has locked.
func makeCurrent() error {
	dev, err := cu.GetDevice(0)
	if err != nil {
		return err
	}
	ctx, err := dev.RetainPrimaryCtx()
	if err != nil {
		return err
	}
	return cu.SetCurrentContext(ctx)
}

// onThreads calls f on each chunk of mem, on threads OS threads with the
// primary context current, taking chunks in turn; it returns the errors.
func onThreads(m []byte, chunk, threads int, f func([]byte) error) error {
	return onThreadsWith(func(int) error { return makeCurrent() }, threads, m, chunk, f)
}

// onContexts is onThreads with thread t's context ctxs[t%len(ctxs)].
func onContexts(ctxs []cu.CUContext, threads int, m []byte, chunk int, f func([]byte) error) error {
	return onThreadsWith(func(t int) error { return cu.SetCurrentContext(ctxs[t%len(ctxs)]) }, threads, m, chunk, f)
}

// onThreadsWith calls f on each chunk of m, taken in turn by threads
// locked threads, thread t after current(t) made its context current.
func onThreadsWith(current func(t int) error, threads int, m []byte, chunk int, f func([]byte) error) error {
	return onOffsets(current, threads, int64(len(m)), int64(chunk), func(off, n int64) error { return f(m[off : off+n]) })
}

// onOffsets calls f(off, len) for each chunk of n bytes, taken in turn by
// threads locked threads, thread t after current(t) made its context
// current; it returns the errors.
func onOffsets(current func(t int) error, threads int, n, chunk int64, f func(off, len int64) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, threads)
	for t := range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if errs[t] = current(t); errs[t] != nil {
				return
			}
			for {
				off := next.Add(chunk) - chunk
				if off >= n {
					return
				}
				if err := f(off, min(chunk, n-off)); err != nil && errs[t] == nil {
					errs[t] = err
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// BenchmarkPinUnderCopy asks why the segment pipeline (BenchmarkColdD2H)
// page-locks slower than the steps alone (BenchmarkFreshPages):
// BENCH_LOAD_PIN_BYTES (default 1 GiB) of fresh huge-page memory faulted
// in, registered, or both, while the device is
//
//   - idle;
//   - dma: copying to another pinned buffer with synchronous 256 MiB
//     copies, one after the other;
//   - dma-async: the same with 64 MiB copies queued on a stream, at most
//     three queued, waited for by events (as the pipeline copies);
//   - calls: copying 4 KiB pieces (driver calls, next to no bandwidth).
//
// staged-15 faults on 15 threads and registers on one, in address order.
// The load's own rate is reported as load-GB/s. On a fresh H100 host
// (docs/h100/round3/coldparts) registering beside dma ran at 2.0 GB/s
// against 45.8 idle, and both on 8 threads beside dma did not finish in
// 8 minutes at 8 GiB: hence the smaller default.
func BenchmarkPinUnderCopy(b *testing.B) {
	n := envBytes(b, "BENCH_LOAD_PIN_BYTES", 1<<30)
	const chunk = 64 << 20
	steps := []struct {
		name    string
		threads int
		f       func([]byte) error
	}{
		{"populate", 16, populate},
		{"register", 1, register},
		{"both", 8, both},
	}
	for _, load := range []string{"idle", "dma", "dma-async", "calls"} {
		for _, s := range steps {
			b.Run(fmt.Sprintf("%s/%s/threads-%d", load, s.name, s.threads), func(b *testing.B) {
				underLoad(b, n, load, func(mem []byte) error {
					if s.name == "register" {
						_ = onThreads(mem, chunk, 16, populate)
					}
					b.StartTimer()
					defer b.StopTimer()
					return onThreads(mem, chunk, s.threads, s.f)
				})
			})
		}
		b.Run(load+"/staged-15", func(b *testing.B) {
			underLoad(b, n, load, func(mem []byte) error {
				b.StartTimer()
				defer b.StopTimer()
				return staged(mem, chunk, 15)
			})
		})
	}
}

func populate(c []byte) error { return unix.Madvise(c, unix.MADV_POPULATE_WRITE) }

func register(c []byte) error { return cuda.HostRegister(unsafe.Pointer(&c[0]), int64(len(c))) }

func both(c []byte) error {
	_ = populate(c)
	return register(c)
}

// underLoad runs f on fresh mappings of n bytes, timed by f, while load
// runs on the device, then unregisters and unmaps them.
func underLoad(b *testing.B, n int64, load string, f func(mem []byte) error) {
	lockedContext(b, 0) // unregistering needs it
	b.SetBytes(n)
	stop := make(chan struct{})
	rate := make(chan float64, 1)
	if load != "idle" {
		started := make(chan error)
		go copyLoop(load, started, stop, rate)
		if err := <-started; err != nil {
			b.Fatal(err)
		}
		defer func() { // also when f fails: the load stops with the case
			close(stop)
			b.ReportMetric(<-rate, "load-GB/s")
		}()
	}
	for b.Loop() {
		b.StopTimer()
		mem := freshMapping(b, n, syscall.MADV_HUGEPAGE)
		if err := f(mem); err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(mem); off += 64 << 20 {
			_ = cuda.HostUnregister(unsafe.Pointer(&mem[off]))
		}
		_ = syscall.Munmap(mem)
		b.StartTimer()
	}
}

// freshMapping maps n bytes of anonymous memory, with advice about its
// pages (MADV_HUGEPAGE or MADV_NOHUGEPAGE).
func freshMapping(b *testing.B, n int64, advice int) []byte {
	mem, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		b.Fatal(err)
	}
	_ = syscall.Madvise(mem, advice)
	return mem
}

// copyLoop copies 1 GiB of device memory to pinned memory in pieces, as
// load says, over and over until stop; it reports its rate in GB/s.
func copyLoop(load string, started chan<- error, stop <-chan struct{}, rate chan<- float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const n = 1 << 30
	step, piece := int64(256<<20), int64(256<<20)
	switch load {
	case "calls":
		piece = 4 << 10
	case "dma-async":
		step, piece = 64<<20, 64<<20
	}
	src, dst, st, release, err := copyBuffers(n)
	started <- err
	if err != nil {
		return
	}
	defer release()
	var flying []cu.Event
	land := func() {
		_ = flying[0].Synchronize()
		_ = cu.DestroyEvent(&flying[0])
		flying = flying[1:]
	}
	var copied int64
	t0 := time.Now()
	for {
		select {
		case <-stop:
			for len(flying) > 0 {
				land()
			}
			rate <- float64(copied) / time.Since(t0).Seconds() / 1e9
			return
		default:
		}
		for off := int64(0); off < n; off += step {
			if load != "dma-async" {
				_ = cu.MemcpyDtoH(unsafe.Add(dst, off), src+cu.DevicePtr(off), piece)
				copied += piece
				continue
			}
			_ = cu.MemcpyDtoHAsync(unsafe.Add(dst, off), src+cu.DevicePtr(off), piece, st)
			ev, err := cu.MakeEvent(cu.DisableTiming)
			if err != nil {
				continue
			}
			_ = ev.Record(st)
			flying = append(flying, ev)
			if len(flying) > 2 {
				land()
			}
			copied += piece
		}
	}
}

// staged faults chunks in on faulting threads and registers them on one
// thread, in address order.
func staged(m []byte, chunk, faulting int) error {
	chunks := (len(m) + chunk - 1) / chunk
	faulted := make([]chan struct{}, chunks)
	for i := range faulted {
		faulted[i] = make(chan struct{})
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range faulting {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= chunks {
					return
				}
				_ = populate(m[i*chunk : min((i+1)*chunk, len(m))])
				close(faulted[i])
			}
		})
	}
	var err error
	wg.Go(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err = makeCurrent(); err != nil {
			return
		}
		for i := range chunks {
			<-faulted[i]
			if rerr := register(m[i*chunk : min((i+1)*chunk, len(m))]); rerr != nil && err == nil {
				err = rerr
			}
		}
	})
	wg.Wait()
	return err
}

// BenchmarkBounceD2H tries cold copies without page-locking the
// destination first: BENCH_PIN_BYTES of device memory copied to a fresh
// pageable mapping
//
//   - bounce: through a ring of 4 page-locked slots (locked once,
//     untimed): the device copies a piece into a free slot while threads
//     copy the slots before it into the mapping, faulting its pages in;
//   - driver: by cuMemcpyDtoH straight to the pageable mapping (the
//     driver's own staging).
//
// Registering runs at a twentieth of its speed while the device copies
// (BenchmarkPinUnderCopy), so a copy that waits for its destination to be
// locked runs at about the sum of the two steps' times; a bounce does not
// register at all, and its cost is the threads' copying.
func BenchmarkBounceD2H(b *testing.B) {
	n := pinBytes(b)
	lockedContext(b, 0) // each case runs on a thread of its own, and makes it current there too
	src, err := cu.MemAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer cu.MemFree(src)
	for _, slot := range []int64{16 << 20, 32 << 20, 64 << 20} {
		for _, threads := range []int{8, 16} {
			b.Run(fmt.Sprintf("bounce/slot-%dMiB/threads-%d", slot>>20, threads), func(b *testing.B) {
				lockedContext(b, 0)
				const slots = 4
				ring, err := cuda.HostAlloc(slots * slot)
				if err != nil {
					b.Fatal(err)
				}
				defer cu.MemFreeHost(ring)
				b.SetBytes(n)
				for b.Loop() {
					b.StopTimer()
					dst := freshMapping(b, n, syscall.MADV_HUGEPAGE)
					b.StartTimer()
					if err := bounce(dst, src, ring, slot, slots, threads); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					_ = syscall.Munmap(dst)
					b.StartTimer()
				}
			})
		}
	}
	b.Run("driver", func(b *testing.B) {
		lockedContext(b, 0)
		b.SetBytes(n)
		for b.Loop() {
			b.StopTimer()
			dst := freshMapping(b, n, syscall.MADV_HUGEPAGE)
			b.StartTimer()
			if err := cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), src, n); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			_ = syscall.Munmap(dst)
			b.StartTimer()
		}
	})
}

// bounce copies len(dst) bytes at src into dst through ring, slots pieces
// of slot bytes: this thread (with the context current) copies each piece
// into a free slot, and threads copy the slots out in order.
func bounce(dst []byte, src cu.DevicePtr, ring unsafe.Pointer, slot int64, slots, threads int) error {
	type piece struct {
		off, n int64
		slot   int
	}
	free := make(chan int, slots)
	for i := range slots {
		free <- i
	}
	landed := make(chan piece, slots)
	type part struct {
		to, from []byte
		done     *sync.WaitGroup
	}
	parts := make(chan part, threads)
	var workers sync.WaitGroup
	for range threads {
		workers.Go(func() {
			for p := range parts {
				copy(p.to, p.from)
				p.done.Done()
			}
		})
	}
	var out sync.WaitGroup
	out.Go(func() { // copies the landed slots out, in order
		for p := range landed {
			from := unsafe.Slice((*byte)(unsafe.Add(ring, int64(p.slot)*slot)), p.n)
			var done sync.WaitGroup
			per := (p.n + int64(threads) - 1) / int64(threads)
			for off := int64(0); off < p.n; off += per {
				k := min(per, p.n-off)
				done.Add(1)
				parts <- part{dst[p.off+off : p.off+off+k], from[off : off+k], &done}
			}
			done.Wait()
			free <- p.slot
		}
		close(parts)
	})
	var err error
	n := int64(len(dst))
	for off := int64(0); off < n && err == nil; off += slot {
		s := <-free
		k := min(slot, n-off)
		err = cu.MemcpyDtoH(unsafe.Add(ring, int64(s)*slot), src+cu.DevicePtr(off), k)
		landed <- piece{off, k, s}
	}
	close(landed)
	out.Wait()
	workers.Wait()
	return err
}

// BenchmarkRegisterBesideCopy asks which of the two steps gives way when
// page-locking and a pipelined copy run at once, and whether a lock in the
// driver or the device decides it. A copier thread queues 64 MiB D2H copies
// to warm pinned memory on a stream, at most four in flight (as the
// pipeline does), and counts the bytes landed; it waits for each piece
//
//   - spin: cuEventSynchronize on an event made with default flags (what
//     the pipeline does);
//   - blocking: on an event made with CU_EVENT_BLOCKING_SYNC (the thread
//     sleeps in the driver);
//   - poll: cuEventQuery every 20 µs (the thread holds nothing between).
//
// Meanwhile BENCH_LOAD_PIN_BYTES (default 4 GiB) of fresh huge-page memory,
// faulted in untimed, is registered in 64 MiB chunks on one thread with the
// primary context current (register), with a second context of the same
// device current (register-ctx2), then unregistered (unregister); populate
// faults in a fresh mapping on 16 threads. Each case reports its own rate
// and copy-GB/s, the copier's rate during the case's window, and
// alone-GB/s, the copier's rate in the 100 ms before it.
func BenchmarkRegisterBesideCopy(b *testing.B) {
	n := envBytes(b, "BENCH_LOAD_PIN_BYTES", 4<<30)
	const chunk = 64 << 20
	ctx2 := secondContext(b)
	var err error
	for _, wait := range []string{"spin", "blocking", "poll"} {
		for _, step := range []string{"register", "register-ctx2", "unregister", "populate"} {
			b.Run(wait+"/"+step, func(b *testing.B) {
				lockedContext(b, 0)
				var landed atomic.Int64
				stop := make(chan struct{})
				started := make(chan error)
				var copier sync.WaitGroup
				copier.Go(func() { pipelinedLoop(wait, &landed, started, stop) })
				defer func() { close(stop); copier.Wait() }()
				if err := <-started; err != nil {
					b.Fatal(err)
				}
				b.SetBytes(n)
				var window, alone time.Duration
				var copied, aloneCopied int64
				for b.Loop() {
					b.StopTimer()
					mem := freshMapping(b, n, syscall.MADV_HUGEPAGE)
					if step != "populate" {
						_ = onThreads(mem, chunk, 16, populate)
					}
					if step == "unregister" {
						if err := onThreads(mem, chunk, 1, register); err != nil {
							b.Fatal(err)
						}
					}
					c0, t0 := landed.Load(), time.Now()
					time.Sleep(100 * time.Millisecond)
					c1, t1 := landed.Load(), time.Now()
					aloneCopied += c1 - c0
					alone += t1.Sub(t0)
					b.StartTimer()
					switch step {
					case "register":
						err = onThreads(mem, chunk, 1, register)
					case "register-ctx2":
						err = onContexts([]cu.CUContext{ctx2}, 1, mem, chunk, register)
					case "unregister":
						err = onThreads(mem, chunk, 1, func(c []byte) error { return cuda.HostUnregister(unsafe.Pointer(&c[0])) })
					case "populate":
						err = onThreads(mem, chunk, 16, populate)
					}
					b.StopTimer()
					c2, t2 := landed.Load(), time.Now()
					copied += c2 - c1
					window += t2.Sub(t1)
					if err != nil {
						b.Fatal(err)
					}
					if step == "register" || step == "register-ctx2" {
						for off := int64(0); off < n; off += chunk {
							_ = cuda.HostUnregister(unsafe.Pointer(&mem[off]))
						}
					}
					_ = syscall.Munmap(mem)
					b.StartTimer()
				}
				b.ReportMetric(float64(copied)/window.Seconds()/1e9, "copy-GB/s")
				b.ReportMetric(float64(aloneCopied)/alone.Seconds()/1e9, "alone-GB/s")
			})
		}
	}
}

// secondContext makes device 0's primary context current on this locked
// thread, and a second context of the device, destroyed when b ends.
func secondContext(b *testing.B) cu.CUContext {
	dev := lockedContext(b, 0)
	ctx2, err := dev.MakeContext(cu.SchedAuto)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ctx2.Destroy() })
	if err := makeCurrent(); err != nil { // MakeContext left ctx2 current
		b.Fatal(err)
	}
	return ctx2
}

// copyBuffers makes device 0's primary context current on this locked
// thread, and n bytes of device memory, n of pinned memory and a stream
// for a copier; release frees them.
func copyBuffers(n int64) (src cu.DevicePtr, dst unsafe.Pointer, st cu.Stream, release func(), err error) {
	if err = makeCurrent(); err != nil {
		return src, dst, st, nil, err
	}
	if src, err = cu.MemAlloc(n); err != nil {
		return src, dst, st, nil, err
	}
	if dst, err = cuda.HostAlloc(n); err != nil {
		_ = cu.MemFree(src)
		return src, dst, st, nil, err
	}
	if st, err = cu.MakeStream(cu.NonBlocking); err != nil {
		_ = cu.MemFreeHost(dst)
		_ = cu.MemFree(src)
		return src, dst, st, nil, err
	}
	return src, dst, st, func() {
		_ = st.Destroy()
		_ = cu.MemFreeHost(dst)
		_ = cu.MemFree(src)
	}, nil
}

// pipelinedLoop copies 1 GiB of device memory to pinned memory in 64 MiB
// pieces queued on a stream, four in flight, waiting as wait says, until
// stop; landed counts the bytes whose copy has finished.
func pipelinedLoop(wait string, landed *atomic.Int64, started chan<- error, stop <-chan struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const n, piece = 1 << 30, 64 << 20
	flags := cu.DisableTiming
	if wait == "blocking" {
		flags |= cu.BlockingSyncEvent
	}
	src, dst, st, release, err := copyBuffers(n)
	started <- err
	if err != nil {
		return
	}
	defer release()
	var flying []cu.Event
	land := func() {
		ev := flying[0]
		flying = flying[1:]
		if wait == "poll" {
			for ev.Query() != nil {
				time.Sleep(20 * time.Microsecond)
			}
		} else {
			_ = ev.Synchronize()
		}
		_ = cu.DestroyEvent(&ev)
		landed.Add(piece)
	}
	defer func() {
		for len(flying) > 0 {
			land()
		}
	}()
	for {
		for off := int64(0); off < n; off += piece {
			select {
			case <-stop:
				return
			default:
			}
			_ = cu.MemcpyDtoHAsync(unsafe.Add(dst, off), src+cu.DevicePtr(off), piece, st)
			ev, err := cu.MakeEvent(flags)
			if err != nil {
				continue
			}
			_ = ev.Record(st)
			flying = append(flying, ev)
			if len(flying) > 4 {
				land()
			}
		}
	}
}

// BenchmarkRegisterContexts asks whether registering scales over contexts
// when one context's lock serialises it (BenchmarkRegisterBesideCopy: a
// second context registers without stopping the primary context's copies).
// While a copier (as there, spin waits) runs on the primary context,
// BENCH_LOAD_PIN_BYTES (default 4 GiB) of fresh huge-page memory is
// registered (faulted in untimed first), faulted in and registered per
// chunk (both), or unregistered (registered untimed on the primary
// context first: does unregistering elsewhere spare the copies, as
// registering elsewhere does?), in 64 MiB chunks on T threads, thread t
// with context t % C of C contexts made for the case. It reports the
// copier's rate in the window, and ctx-MiB, the device memory one context
// took.
func BenchmarkRegisterContexts(b *testing.B) {
	n := envBytes(b, "BENCH_LOAD_PIN_BYTES", 4<<30)
	const chunk = 64 << 20
	dev := lockedContext(b, 0)
	free0, _, err := cu.MemInfo()
	if err != nil {
		b.Fatal(err)
	}
	var ctxs []cu.CUContext
	defer func() {
		for i := range ctxs {
			_ = ctxs[i].Destroy()
		}
	}()
	for range 8 {
		c, err := dev.MakeContext(cu.SchedAuto)
		if err != nil {
			b.Fatal(err)
		}
		ctxs = append(ctxs, c)
	}
	if err := makeCurrent(); err != nil {
		b.Fatal(err)
	}
	free1, _, _ := cu.MemInfo()
	perCtx := float64(free0-free1) / 8 / (1 << 20)
	var landed atomic.Int64
	stop := make(chan struct{})
	started := make(chan error)
	var copier sync.WaitGroup
	copier.Go(func() { pipelinedLoop("spin", &landed, started, stop) })
	defer func() { close(stop); copier.Wait() }()
	if err := <-started; err != nil {
		b.Fatal(err)
	}
	unregister := func(c []byte) error { return cuda.HostUnregister(unsafe.Pointer(&c[0])) }
	for _, step := range []string{"register", "both", "unregister"} {
		for _, tc := range [][2]int{{1, 1}, {4, 1}, {2, 2}, {4, 4}, {8, 4}, {8, 8}} {
			threads, contexts := tc[0], tc[1]
			b.Run(fmt.Sprintf("%s/threads-%d/contexts-%d", step, threads, contexts), func(b *testing.B) {
				lockedContext(b, 0)
				b.SetBytes(n)
				var window time.Duration
				var copied int64
				for b.Loop() {
					b.StopTimer()
					mem := freshMapping(b, n, syscall.MADV_HUGEPAGE)
					f := both
					switch step {
					case "register":
						_ = onThreads(mem, chunk, 16, populate)
						f = register
					case "unregister":
						if err := onThreads(mem, chunk, 8, both); err != nil {
							b.Fatal(err)
						}
						f = unregister
					}
					c1, t1 := landed.Load(), time.Now()
					b.StartTimer()
					err := onContexts(ctxs[:contexts], threads, mem, chunk, f)
					b.StopTimer()
					copied += landed.Load() - c1
					window += time.Since(t1)
					if err != nil {
						b.Fatal(err)
					}
					if step != "unregister" {
						_ = onThreads(mem, chunk, 1, unregister)
					}
					_ = syscall.Munmap(mem)
					b.StartTimer()
				}
				b.ReportMetric(float64(copied)/window.Seconds()/1e9, "copy-GB/s")
				b.ReportMetric(perCtx, "ctx-MiB")
			})
		}
	}
}
