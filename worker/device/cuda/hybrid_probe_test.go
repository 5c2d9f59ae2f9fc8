//go:build cuda

package cuda_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/cuda"
)

// BenchmarkHybridD2H asks whether a cold copy can pass the bound of the
// pipeline, which registers its destination while it copies and so takes
// turns with its own copies (docs/h100/round3/besidecopy: registering
// stops the copies of the context that registers, not another's). It
// copies BENCH_PIN_BYTES (default 8 GiB) of device memory to host memory
// that is not page-locked yet, splitting it:
//
//   - the first part by memworker's pipeline (a fresh pinned segment,
//     locked by the pinning threads while the copy runs, on the primary
//     context);
//   - at the same time the rest, a fraction f, through a ring of four
//     64 MiB page-locked slots (locked once, untimed) into fresh pageable
//     memory, threads copying the slots out, on a second context (ctx2) or
//     on the primary (the control).
//
// If the second context's copies run while the primary registers, the two
// parts add up. Each case logs the whole rate and each part's; raw-warm is
// the driver's copy to memory locked long ago, in the same run.
func BenchmarkHybridD2H(b *testing.B) {
	n := envBytes(b, "BENCH_PIN_BYTES", 8*GiB)
	bg := context.Background()
	be := open(b, cuda.Config{})
	srcAddr, err := be.Alloc(bg, 0, device.VRAM, n)
	if err != nil {
		b.Fatal(err)
	}
	src := cu.DevicePtr(srcAddr)
	ctx2 := secondContext(b)
	// Whether ctx2 may copy from memory the primary context allocated.
	// If not, the bounce copies from memory of its own (the same bytes
	// for the probe's purpose), and the log says so.
	bounceSrc := src
	if err := onContext(ctx2, func() error {
		p, err := cuda.HostAlloc(2 << 20)
		if err != nil {
			return err
		}
		defer cu.MemFreeHost(p)
		if err := cu.MemcpyDtoH(p, src, 2<<20); err != nil {
			b.Logf("ctx2 cannot copy from the primary context's memory (%v): the bounce copies from its own", err)
			bounceSrc, err = cu.MemAlloc(n)
			return err
		}
		b.Logf("ctx2 copies from the primary context's memory")
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	if bounceSrc != src {
		defer onContext(ctx2, func() error { return cu.MemFree(bounceSrc) })
	}
	const slot, slots = 64 << 20, 4
	rings := map[string]unsafe.Pointer{}
	for name, c := range map[string]cu.CUContext{"ctx2": ctx2, "primary": {}} {
		if err := onContext(c, func() (err error) { rings[name], err = cuda.HostAlloc(slots * slot); return err }); err != nil {
			b.Fatal(err)
		}
	}
	defer func() {
		for _, r := range rings {
			_ = cu.MemFreeHost(r)
		}
	}()
	bounceOn := func(name string, dst []byte, off int64, threads int) error {
		c := ctx2
		from := bounceSrc
		if name == "primary" {
			c, from = cu.CUContext{}, src
		}
		return onContext(c, func() error { return bounce(dst, from+cu.DevicePtr(off), rings[name], slot, slots, threads) })
	}
	type part struct {
		rate float64
		err  error
	}
	run := func(b *testing.B, f float64, on string, threads int) {
		bounced := int64(f*float64(n)) / slot * slot
		piped := n - bounced
		b.SetBytes(n)
		for b.Loop() {
			b.StopTimer()
			var seg uint64
			if piped > 0 {
				if seg, err = be.Alloc(bg, 0, device.Pinned, piped); err != nil {
					b.Fatal(err)
				}
			}
			var dst []byte
			if bounced > 0 {
				dst = freshMapping(b, bounced, syscall.MADV_HUGEPAGE)
			}
			b.StartTimer()
			start := time.Now()
			var wg sync.WaitGroup
			var pipe, bnc part
			if piped > 0 {
				wg.Go(func() {
					t := time.Now()
					pipe.err = be.CopyChunks(bg, device.Location{Kind: device.Pinned, Addr: seg}, device.Location{Kind: device.VRAM, Addr: srcAddr}, piped, 64*MiB, func(int64) {})
					pipe.rate = float64(piped) / time.Since(t).Seconds() / 1e9
				})
			}
			if bounced > 0 {
				wg.Go(func() {
					t := time.Now()
					bnc.err = bounceOn(on, dst, piped, threads)
					bnc.rate = float64(bounced) / time.Since(t).Seconds() / 1e9
				})
			}
			wg.Wait()
			took := time.Since(start)
			b.StopTimer()
			if pipe.err != nil || bnc.err != nil {
				b.Fatal(pipe.err, bnc.err)
			}
			b.Logf("%.1f GB/s whole (%.2f s): pipeline %.2f GiB at %.1f GB/s, bounce %.2f GiB at %.1f GB/s",
				float64(n)/took.Seconds()/1e9, took.Seconds(), float64(piped)/float64(GiB), pipe.rate, float64(bounced)/float64(GiB), bnc.rate)
			if seg != 0 {
				_ = be.Free(bg, 0, device.Pinned, seg)
			}
			if dst != nil {
				_ = syscall.Munmap(dst)
			}
			b.StartTimer()
		}
	}
	b.Run("raw-warm", func(b *testing.B) { rawWarmD2H(b, src, n) })
	b.Run("pipeline", func(b *testing.B) { run(b, 0, "", 0) })
	for _, threads := range []int{8, 12} {
		b.Run(fmt.Sprintf("bounce-ctx2-threads-%d", threads), func(b *testing.B) { run(b, 1, "ctx2", threads) })
	}
	for _, f := range []int{30, 40, 50} {
		for _, threads := range []int{8, 12} {
			b.Run(fmt.Sprintf("hybrid-%d%%-ctx2-threads-%d", f, threads), func(b *testing.B) { run(b, float64(f)/100, "ctx2", threads) })
		}
	}
	b.Run("hybrid-40%-primary-threads-8", func(b *testing.B) { run(b, 0.4, "primary", 8) })
	b.Run("pipeline-again", func(b *testing.B) { run(b, 0, "", 0) })
}

// onContext runs f on a locked thread of its own with c current (the zero
// context: device 0's primary), and leaves no context current there.
func onContext(c cu.CUContext, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var err error
		if c == (cu.CUContext{}) {
			err = makeCurrent()
		} else {
			err = cu.SetCurrentContext(c)
		}
		if err == nil {
			err = f()
		}
		_ = cu.SetCurrentContext(cu.CUContext{})
		errc <- err
	}()
	return <-errc
}
