//go:build cuda

package cuda_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
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
						mem, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
						if err != nil {
							b.Fatal(err)
						}
						advice := syscall.MADV_HUGEPAGE
						if pages == "small" {
							advice = syscall.MADV_NOHUGEPAGE
						}
						_ = syscall.Madvise(mem, advice)
						if step == "register" {
							_ = onThreads(mem, chunk, threads, func(c []byte) error { return unix.Madvise(c, unix.MADV_POPULATE_WRITE) })
						}
						b.StartTimer()
						err = onThreads(mem, chunk, threads, func(c []byte) error {
							p := unsafe.Pointer(&c[0])
							switch step {
							case "populate":
								return unix.Madvise(c, unix.MADV_POPULATE_WRITE)
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
								return cuda.HostRegister(p, int64(len(c)))
							case "both":
								_ = unix.Madvise(c, unix.MADV_POPULATE_WRITE)
								return cuda.HostRegister(p, int64(len(c)))
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

// onThreads calls f on each chunk of mem, on threads OS threads with the
// current context, taking chunks in turn; it returns the first error.
func onThreads(m []byte, chunk, threads int, f func([]byte) error) error {
	dev, err := cu.GetDevice(0)
	if err != nil {
		return err
	}
	ctx, err := dev.RetainPrimaryCtx()
	if err != nil {
		return err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, threads)
	for t := range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := cu.SetCurrentContext(ctx); err != nil {
				errs[t] = err
				return
			}
			for {
				off := int(next.Add(int64(chunk))) - chunk
				if off >= len(m) {
					return
				}
				if err := f(m[off:min(off+chunk, len(m))]); err != nil && errs[t] == nil {
					errs[t] = err
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
