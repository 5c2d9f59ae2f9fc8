//go:build cuda

package cuda_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/crc32c"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/cuda"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/transfer"
)

var (
	_ worker.Backend       = (*cuda.Backend)(nil)
	_ ledger.ChunkCopier   = (*cuda.Backend)(nil)
	_ transfer.Checksummer = (*cuda.Backend)(nil)
)

// TestCopyHonoursItsContext: a cancelled context stops a copy between
// chunks, and a live one copies every chunk.
func TestCopyHonoursItsContext(t *testing.T) {
	b := open(t, cuda.Config{})
	ctx := context.Background()
	n := GiB
	src, err := b.Alloc(ctx, 0, device.VRAM, n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(ctx, 0, device.VRAM, src)
	dst, err := b.Alloc(ctx, 0, device.VRAM, n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(ctx, 0, device.VRAM, dst)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	at := func(addr uint64) device.Location { return device.Location{Device: 0, Kind: device.VRAM, Addr: addr} }
	if err := b.Copy(cancelled, at(dst), at(src), n); !errors.Is(err, context.Canceled) {
		t.Errorf("copy with a cancelled context: %v, want context.Canceled", err)
	}
	want := pattern(n, 7)
	if err := b.Write(ctx, at(src), want); err != nil {
		t.Fatal(err)
	}
	if err := b.Copy(ctx, at(dst), at(src), n); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if err := b.Read(ctx, at(dst), got); err != nil || !bytes.Equal(got, want) {
		t.Errorf("a 1 GiB copy in chunks: content differs (%v)", err)
	}
}

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

func open(t testing.TB, cfg cuda.Config) *cuda.Backend {
	t.Helper()
	b, err := cuda.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestDevicesAndMemInfo(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{})
	infos, err := b.Devices(ctx)
	if err != nil || len(infos) == 0 {
		t.Fatalf("Devices() = %v, %v", infos, err)
	}
	for _, d := range infos {
		t.Logf("device %d: %s %s cc %s, %d bytes", d.Index, d.Name, d.UUID, d.ComputeCapability, d.TotalBytes)
		if d.TotalBytes < GiB || d.UUID == "" || d.ComputeCapability == "" {
			t.Errorf("device %+v", d)
		}
	}
	before, _ := b.MemInfo(ctx, 0)
	addr, err := b.Alloc(ctx, 0, device.VRAM, GiB)
	if err != nil {
		t.Fatal(err)
	}
	during, _ := b.MemInfo(ctx, 0)
	if before.FreeBytes-during.FreeBytes != GiB {
		t.Errorf("free %d -> %d after 1 GiB, want a drop of exactly 1 GiB", before.FreeBytes, during.FreeBytes)
	}
	if err := b.Free(ctx, 0, device.VRAM, addr); err != nil {
		t.Fatal(err)
	}
	if after, _ := b.MemInfo(ctx, 0); after.FreeBytes != before.FreeBytes {
		t.Errorf("free %d after freeing, want %d", after.FreeBytes, before.FreeBytes)
	}
	if err := b.Free(ctx, 0, device.VRAM, addr); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("double free: %v", err)
	}
}

func TestMemoryLimitMakesASlice(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{MemoryLimit: GiB})
	mi, _ := b.MemInfo(ctx, 0)
	if mi.TotalBytes != GiB || mi.FreeBytes != GiB {
		t.Fatalf("MemInfo = %+v, want a 1 GiB slice, all free", mi)
	}
	if _, err := b.Alloc(ctx, 0, device.VRAM, 2*GiB); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("2 GiB in a 1 GiB slice: %v", err)
	}
	if err := b.SetExternalUsage(0, 512*MiB); err != nil {
		t.Fatal(err)
	}
	if mi, _ := b.MemInfo(ctx, 0); mi.FreeBytes != 512*MiB {
		t.Errorf("after another user took 512 MiB: %+v", mi)
	}
}

func pattern(n int64, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed ^ byte(i) ^ byte(i>>9)
	}
	return p
}

func TestCopiesKeepContent(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{})
	infos, _ := b.Devices(ctx)
	const n = 64 << 20
	want := pattern(n, 7)
	vram := func(dev int) device.Location {
		a, err := b.Alloc(ctx, dev, device.VRAM, n)
		if err != nil {
			t.Fatal(err)
		}
		return device.Location{Device: dev, Kind: device.VRAM, Addr: a}
	}
	pinned := func() device.Location {
		a, err := b.Alloc(ctx, 0, device.Pinned, n)
		if err != nil {
			t.Fatal(err)
		}
		return device.Location{Device: 0, Kind: device.Pinned, Addr: a}
	}
	check := func(what string, at device.Location) {
		got := make([]byte, n)
		if err := b.Read(ctx, at, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs", what)
		}
	}
	src := vram(0)
	if err := b.Write(ctx, src, want); err != nil {
		t.Fatal(err)
	}
	check("write then read", src)
	d2d := vram(0)
	if err := b.Copy(ctx, d2d, src, n); err != nil {
		t.Fatal(err)
	}
	check("device to device", d2d)
	host := pinned()
	if err := b.Copy(ctx, host, d2d, n); err != nil {
		t.Fatal(err)
	}
	check("device to pinned host", host)
	back := vram(0)
	if err := b.Copy(ctx, back, host, n); err != nil {
		t.Fatal(err)
	}
	check("pinned host to device", back)
	if len(infos) > 1 {
		peer := vram(1)
		if err := b.Copy(ctx, peer, src, n); err != nil {
			t.Fatal(err)
		}
		check("peer", peer)
	} else {
		t.Log("one GPU: peer copy not tested")
	}
}

func TestExportAndTelemetry(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{})
	a, _ := b.Alloc(ctx, 0, device.VRAM, 2*MiB)
	h, err := b.Export(ctx, 0, a)
	if err != nil || len(h) != cuda.IPCHandleSize {
		t.Fatalf("Export = %d bytes, %v", len(h), err)
	}
	procs, reserved, err := b.Processes(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NVML: %d processes %+v, driver reserves %d bytes (this pid %d)", len(procs), procs, reserved, os.Getpid())
}

// lockedContext makes device dev's primary context current on this
// goroutine's thread, for raw driver calls, and returns the device.
func lockedContext(b testing.TB, dev int) cu.Device {
	runtime.LockOSThread()
	b.Cleanup(runtime.UnlockOSThread)
	d, err := cu.GetDevice(dev)
	if err != nil {
		b.Fatal(err)
	}
	ctx, err := d.RetainPrimaryCtx()
	if err != nil {
		b.Fatal(err)
	}
	if err := cu.SetCurrentContext(ctx); err != nil {
		b.Fatal(err)
	}
	return d
}

// synced waits for a device-to-device copy, which returns before it ends.
func synced(err error) error {
	if err != nil {
		return err
	}
	return cu.Synchronize()
}

// BenchmarkCopy measures memworker's Copy beside the raw driver call it
// makes, for 1 GiB buffers: device to device, pinned host to device, device
// to pinned host, and peer.
func BenchmarkCopy(b *testing.B) {
	ctx := context.Background()
	be := open(b, cuda.Config{})
	infos, _ := be.Devices(ctx)
	const n = GiB
	loc := func(dev int, kind device.Kind) device.Location {
		a, err := be.Alloc(ctx, dev, kind, n)
		if err != nil {
			b.Fatal(err)
		}
		return device.Location{Device: dev, Kind: kind, Addr: a}
	}
	d0, d0b, h0 := loc(0, device.VRAM), loc(0, device.VRAM), loc(0, device.Pinned)
	lockedContext(b, 0)
	// The raw copies use memory the driver page-locked in one piece
	// (memworker's segments are locked in chunks, and a driver copy must
	// not span two registrations).
	raw, err := cuda.HostAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cu.MemFreeHost(raw) })
	cases := []struct {
		name     string
		dst, src device.Location
		raw      func() error
	}{
		{"D2D", d0b, d0, func() error { return synced(cu.MemcpyDtoD(cu.DevicePtr(d0b.Addr), cu.DevicePtr(d0.Addr), n)) }},
		{"H2D", d0, h0, func() error { return cu.MemcpyHtoD(cu.DevicePtr(d0.Addr), raw, n) }},
		{"D2H", h0, d0, func() error { return cu.MemcpyDtoH(raw, cu.DevicePtr(d0.Addr), n) }},
	}
	if len(infos) > 1 {
		d1 := loc(1, device.VRAM)
		dev0, _ := cu.GetDevice(0)
		dev1, _ := cu.GetDevice(1)
		c0, _ := dev0.RetainPrimaryCtx()
		c1, _ := dev1.RetainPrimaryCtx()
		cases = append(cases, struct {
			name     string
			dst, src device.Location
			raw      func() error
		}{"Peer", d1, d0, func() error { return synced(cu.MemcpyPeer(cu.DevicePtr(d1.Addr), c1, cu.DevicePtr(d0.Addr), c0, n)) }})
	}
	for _, c := range cases {
		b.Run(c.name+"/memworker", func(b *testing.B) {
			b.SetBytes(n)
			for b.Loop() {
				if err := be.Copy(ctx, c.dst, c.src, n); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/raw", func(b *testing.B) {
			lockedContext(b, 0)
			b.SetBytes(n)
			for b.Loop() {
				if err := c.raw(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// source adapts the backend to the pool, as the worker does.
type source struct{ b *cuda.Backend }

func (s source) AllocSegment(ctx context.Context, size int64) (uint64, error) {
	return s.b.Alloc(ctx, 0, device.VRAM, size)
}
func (s source) FreeSegment(ctx context.Context, addr uint64) error {
	return s.b.Free(ctx, 0, device.VRAM, addr)
}

// BenchmarkAllocFree1MiB puts the pool's cached allocate+free of 1 MiB (on
// cuMemAlloc segments, and on virtual memory) beside the driver's
// cuMemAlloc+cuMemFree.
func BenchmarkAllocFree1MiB(b *testing.B) {
	ctx := context.Background()
	be := open(b, cuda.Config{})
	b.Run("pool", func(b *testing.B) {
		p := alloc.New(source{be})
		for b.Loop() {
			blk, err := p.Alloc(ctx, MiB, 0)
			if err != nil {
				b.Fatal(err)
			}
			_ = p.Free(blk)
		}
	})
	b.Run("pool-vmm", func(b *testing.B) {
		if be.Granularity(0) == 0 {
			b.Skip("no virtual memory")
		}
		p := alloc.NewMapped(mapper{source{be}}, 90*GiB, 0)
		for b.Loop() {
			blk, err := p.Alloc(ctx, MiB, 0)
			if err != nil {
				b.Fatal(err)
			}
			_ = p.Free(blk)
		}
	})
	b.Run("raw", func(b *testing.B) {
		lockedContext(b, 0)
		for b.Loop() {
			p, err := cu.MemAlloc(MiB)
			if err != nil {
				b.Fatal(err)
			}
			if err := cu.MemFree(p); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTelemetry measures what a status costs the backend: device
// truth (MemInfo) beside the bare driver call on a thread that already has
// the context, and NVML's process list.
func BenchmarkTelemetry(b *testing.B) {
	ctx := context.Background()
	be := open(b, cuda.Config{})
	b.Run("MemInfo", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.MemInfo(ctx, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MemInfo/raw", func(b *testing.B) {
		lockedContext(b, 0)
		for b.Loop() {
			if _, _, err := cu.MemInfo(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Processes", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := be.Processes(ctx, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPipelinedCopiesKeepContent: CopyChunks lands every byte, reports the
// pieces in order and in full, and copies into pinned memory that is still
// being page-locked, at an offset that crosses its locked chunks.
func TestPipelinedCopiesKeepContent(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{})
	infos, _ := b.Devices(ctx)
	const n, off = 300 * MiB, 100*MiB + 4096
	want := pattern(n, 3)
	alloc := func(dev int, kind device.Kind, size int64) device.Location {
		a, err := b.Alloc(ctx, dev, kind, size)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Free(ctx, dev, kind, a) })
		return device.Location{Device: dev, Kind: kind, Addr: a}
	}
	copyChunks := func(what string, dst, src device.Location) {
		var landed []int64
		var sum int64
		if err := b.CopyChunks(ctx, dst, src, n, 64*MiB, func(m int64) { landed = append(landed, m); sum += m }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if sum != n || int64(len(landed)) < n/(64*MiB) {
			t.Errorf("%s: landed %v, want %d bytes in pieces of at most 64 MiB", what, landed, n)
		}
		got := make([]byte, n)
		if err := b.Read(ctx, dst, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs", what)
		}
	}
	src := alloc(0, device.VRAM, n)
	if err := b.Write(ctx, src, want); err != nil {
		t.Fatal(err)
	}
	host := alloc(0, device.Pinned, 512*MiB) // fresh: locked while it is copied into
	host.Addr += uint64(off)
	copyChunks("device to fresh pinned memory", host, src)
	back := alloc(0, device.VRAM, n)
	copyChunks("pinned memory to device", back, host)
	if len(infos) > 1 {
		copyChunks("peer", alloc(1, device.VRAM, n), back)
	}
}

// pinBytes is BENCH_PIN_BYTES, the size of the pinning benchmarks (default
// 1 GiB; the GPU pass uses 8 GiB).
func pinBytes(b *testing.B) int64 { return envBytes(b, "BENCH_PIN_BYTES", GiB) }

// envBytes is the byte count in the environment variable name, or def.
func envBytes(b *testing.B, name string, def int64) int64 {
	n := def
	if s := os.Getenv(name); s != "" {
		if _, err := fmt.Sscan(s, &n); err != nil {
			b.Fatal(err)
		}
	}
	return n
}

// TestPinnedSegmentsShareThePinningThreads: segments made at once are
// page-locked by the host's pinning threads, the oldest first; each ends
// locked and holds what is written to it, and one freed while it still
// waits for its chunks goes at once.
func TestPinnedSegmentsShareThePinningThreads(t *testing.T) {
	for _, contexts := range []int{0, 2} { // the primary context, or two of their own
		t.Run(fmt.Sprintf("pin-contexts-%d", contexts), func(t *testing.T) {
			pinnedSegmentsShareThreads(t, cuda.Config{PinThreads: 2, PinContexts: contexts})
		})
	}
}

func pinnedSegmentsShareThreads(t *testing.T, cfg cuda.Config) {
	ctx := context.Background()
	b := open(t, cfg)
	var segs []uint64
	for range 4 {
		a, err := b.Alloc(ctx, 0, device.Pinned, 512*MiB)
		if err != nil {
			t.Fatal(err)
		}
		segs = append(segs, a)
	}
	if err := b.Free(ctx, 0, device.Pinned, segs[2]); err != nil { // its chunks are still queued
		t.Fatal(err)
	}
	segs = slices.Delete(segs, 2, 3)
	for i, a := range segs {
		if err := b.WaitLocked(ctx, a); err != nil {
			t.Fatal(err)
		}
		if locked, err := b.SegmentLocked(a); err != nil || !locked {
			t.Fatalf("segment %d: the driver does not have it page-locked throughout (%v)", i, err)
		}
		at := device.Location{Kind: device.Pinned, Addr: a}
		want := pattern(512*MiB, byte(i))
		if err := b.Write(ctx, at, want); err != nil {
			t.Fatal(err)
		}
		d, err := b.Alloc(ctx, 0, device.VRAM, 512*MiB)
		if err != nil {
			t.Fatal(err)
		}
		dev := device.Location{Kind: device.VRAM, Addr: d}
		got := make([]byte, 512*MiB)
		if err := b.Copy(ctx, dev, at, 512*MiB); err != nil {
			t.Fatal(err)
		}
		if err := b.Read(ctx, dev, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("segment %d: content differs through the GPU (%v)", i, err)
		}
		_ = b.Free(ctx, 0, device.VRAM, d)
		if err := b.Free(ctx, 0, device.Pinned, a); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkPin page-locks BENCH_PIN_BYTES (default 1 GiB) of fresh host
// memory: the driver's cuMemHostAlloc beside memworker's pinned segments
// (mapped, then faulted in and locked a chunk at a time on threads).
func BenchmarkPin(b *testing.B) {
	n := pinBytes(b)
	ctx := context.Background()
	b.Run("raw-cuMemHostAlloc", func(b *testing.B) { freshHostAlloc(b, n, func(unsafe.Pointer) error { return nil }) })
	for _, threads := range []int{1, 4, 8, 16} {
		b.Run(fmt.Sprintf("memworker-threads-%d", threads), func(b *testing.B) {
			be := open(b, cuda.Config{PinThreads: threads})
			b.SetBytes(n)
			for b.Loop() {
				a, err := be.Alloc(ctx, 0, device.Pinned, n)
				if err != nil {
					b.Fatal(err)
				}
				if err := be.WaitLocked(ctx, a); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = be.Free(ctx, 0, device.Pinned, a)
				b.StartTimer()
			}
		})
	}
}

// freshHostAlloc times, in every iteration, cuMemHostAlloc of n bytes and
// f on them; freeing them is not timed.
func freshHostAlloc(b *testing.B, n int64, f func(p unsafe.Pointer) error) {
	lockedContext(b, 0)
	b.SetBytes(n)
	for b.Loop() {
		p, err := cuda.HostAlloc(n)
		if err != nil {
			b.Fatal(err)
		}
		if err := f(p); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = cu.MemFreeHost(p)
		b.StartTimer()
	}
}

// BenchmarkColdD2H copies BENCH_PIN_BYTES (default 1 GiB) of device memory
// to host memory that is not page-locked yet: memworker's fresh pinned
// segment, locked while the copy runs, beside the driver's cuMemHostAlloc
// then cuMemcpyDtoH, and the warm raw copy.
func BenchmarkColdD2H(b *testing.B) {
	n := pinBytes(b)
	ctx := context.Background()
	be := open(b, cuda.Config{})
	src, err := be.Alloc(ctx, 0, device.VRAM, n)
	if err != nil {
		b.Fatal(err)
	}
	from := device.Location{Kind: device.VRAM, Addr: src}
	coldD2H := func(b *testing.B, be *cuda.Backend) {
		b.SetBytes(n)
		for b.Loop() {
			a, err := be.Alloc(ctx, 0, device.Pinned, n)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := be.CopyChunks(ctx, device.Location{Kind: device.Pinned, Addr: a}, from, n, 64*MiB, func(int64) {}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.Logf("%.1f GB/s", float64(n)/time.Since(start).Seconds()/1e9)
			_ = be.Free(ctx, 0, device.Pinned, a)
			b.StartTimer()
		}
	}
	b.Run("memworker", func(b *testing.B) { coldD2H(b, be) })
	// The same by pinning threads (docs/h100/round3/coldpin: more than 8
	// only contend).
	for _, threads := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("memworker-threads-%d", threads), func(b *testing.B) {
			coldD2H(b, open(b, cuda.Config{PinThreads: threads}))
		})
	}
	// BENCH_COLD_VARIANTS: the same by bytes per cuMemHostRegister and
	// threads.
	if os.Getenv("BENCH_COLD_VARIANTS") != "" {
		for _, chunk := range []int64{32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB} {
			for _, threads := range []int{8, 16} {
				b.Run(fmt.Sprintf("memworker-chunk-%dMiB-threads-%d", chunk/MiB, threads), func(b *testing.B) {
					old := cuda.SetPinChunk(chunk)
					defer cuda.SetPinChunk(old)
					coldD2H(b, open(b, cuda.Config{PinThreads: threads}))
				})
			}
		}
	}
	// BENCH_COLD_WAYS: the same with the pinning threads registering on
	// contexts of their own (docs/h100/round3/besidecopy).
	if os.Getenv("BENCH_COLD_WAYS") != "" {
		for _, own := range []int{2, 4, 8, 1, 0} {
			b.Run(fmt.Sprintf("memworker-own-contexts-%d", own), func(b *testing.B) {
				coldD2H(b, open(b, cuda.Config{PinContexts: own}))
			})
		}
	}
	// BENCH_COLD_HELD: the same while the process holds 8, 16 and 32 GiB
	// page-locked already (a pinned pool, offloaded models).
	if os.Getenv("BENCH_COLD_HELD") != "" {
		for _, held := range []int64{8, 16, 32} {
			b.Run(fmt.Sprintf("memworker-holding-%dGiB", held), func(b *testing.B) {
				hb := open(b, cuda.Config{})
				for range held / 8 {
					a, err := hb.Alloc(ctx, 0, device.Pinned, 8*GiB)
					if err != nil {
						b.Fatal(err)
					}
					if err := hb.WaitLocked(ctx, a); err != nil {
						b.Fatal(err)
					}
				}
				coldD2H(b, hb)
			})
		}
	}
	b.Run("raw-cold", func(b *testing.B) {
		freshHostAlloc(b, n, func(p unsafe.Pointer) error { return cu.MemcpyDtoH(p, cu.DevicePtr(src), n) })
	})
	b.Run("raw-warm", func(b *testing.B) { rawWarmD2H(b, cu.DevicePtr(src), n) })
}

// rawWarmD2H is the driver's copy of n bytes at src to host memory locked
// long ago.
func rawWarmD2H(b *testing.B, src cu.DevicePtr, n int64) {
	lockedContext(b, 0)
	p, err := cuda.HostAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer cu.MemFreeHost(p)
	b.SetBytes(n)
	for b.Loop() {
		if err := cu.MemcpyDtoH(p, src, n); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPipelined measures CopyChunks (pieces queued on streams, an
// event after each) for 1 GiB, by streams and piece size, for the copies
// transfers and moves make; BenchmarkCopy has the raw driver copies.
func BenchmarkPipelined(b *testing.B) {
	ctx := context.Background()
	const n = GiB
	for _, streams := range []int{1, 2} {
		be := open(b, cuda.Config{CopyStreams: streams})
		infos, _ := be.Devices(ctx)
		loc := func(dev int, kind device.Kind) device.Location {
			a, err := be.Alloc(ctx, dev, kind, n)
			if err != nil {
				b.Fatal(err)
			}
			return device.Location{Device: dev, Kind: kind, Addr: a}
		}
		d0, h0 := loc(0, device.VRAM), loc(0, device.Pinned)
		cases := []struct {
			name     string
			dst, src device.Location
		}{{"H2D", d0, h0}, {"D2H", h0, d0}}
		if len(infos) > 1 {
			cases = append(cases, struct {
				name     string
				dst, src device.Location
			}{"Peer", loc(1, device.VRAM), d0})
		}
		for _, c := range cases {
			for _, chunk := range []int64{64 * MiB, 256 * MiB} {
				b.Run(fmt.Sprintf("%s/streams-%d/chunk-%dMiB", c.name, streams, chunk/MiB), func(b *testing.B) {
					b.SetBytes(n)
					for b.Loop() {
						if err := be.CopyChunks(ctx, c.dst, c.src, n, chunk, func(int64) {}); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// TestChecksumIsCRC32C: device memory summed on the GPU and pinned memory
// read back and summed there (over more than one read-back piece) give
// hash/crc32's CRC-32C, at any length and offset.
func TestChecksumIsCRC32C(t *testing.T) {
	ctx := context.Background()
	b := open(t, cuda.Config{})
	const n = 100*MiB + 12345
	want := pattern(n, 5)
	for _, kind := range []device.Kind{device.VRAM, device.Pinned} {
		a, err := b.Alloc(ctx, 0, kind, n+MiB)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free(ctx, 0, kind, a)
		for _, off := range []uint64{0, 3, 4096} {
			at := device.Location{Kind: kind, Addr: a + off}
			if err := b.Write(ctx, at, want); err != nil {
				t.Fatal(err)
			}
			for _, m := range []int64{0, 1, 64<<10 - 1, 64 << 10, n} {
				got, err := b.Checksum(ctx, at, m)
				if w := crc32.Checksum(want[:m], crc32c.Table); err != nil || got != w {
					t.Errorf("%s at +%d, %d bytes: %#x (%v), want %#x", kind, off, m, got, err, w)
				}
			}
		}
	}
}

// BenchmarkChecksum sums BENCH_PIN_BYTES (default 1 GiB) of device memory
// on the GPU, and 64 MiB of pinned memory read back into the GPU.
func BenchmarkChecksum(b *testing.B) {
	n := pinBytes(b)
	ctx := context.Background()
	be := open(b, cuda.Config{})
	for _, c := range []struct {
		kind device.Kind
		n    int64
	}{{device.VRAM, n}, {device.Pinned, 64 * MiB}} {
		a, err := be.Alloc(ctx, 0, c.kind, c.n)
		if err != nil {
			b.Fatal(err)
		}
		at := device.Location{Kind: c.kind, Addr: a}
		if c.kind == device.Pinned {
			_ = be.WaitLocked(ctx, a)
		}
		b.Run(c.kind.String(), func(b *testing.B) {
			b.SetBytes(c.n)
			for b.Loop() {
				if _, err := be.Checksum(ctx, at, c.n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
