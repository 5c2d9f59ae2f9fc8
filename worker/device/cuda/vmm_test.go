//go:build cuda

package cuda_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/cuda"
	"github.com/memworker/memworker/worker/ledger"
)

var _ ledger.Mapper = (*cuda.Backend)(nil)

// mapper adapts device 0's virtual memory to the pool, as the worker does.
type mapper struct{ source }

func (m mapper) Granularity() int64 { return m.b.Granularity(0) }
func (m mapper) Reserve(ctx context.Context, size int64) (uint64, error) {
	return m.b.Reserve(ctx, 0, size)
}
func (m mapper) Unreserve(ctx context.Context, addr uint64, size int64) error {
	return m.b.Unreserve(ctx, 0, addr, size)
}
func (m mapper) Map(ctx context.Context, addr uint64, size int64) error {
	return m.b.Map(ctx, 0, addr, size)
}
func (m mapper) Unmap(ctx context.Context, addr uint64, size int64) error {
	return m.b.Unmap(ctx, 0, addr, size)
}

// openVMM opens the devices with virtual memory, skipping where there is
// none.
func openVMM(t testing.TB) *cuda.Backend {
	t.Helper()
	b := open(t, cuda.Config{})
	if b.Granularity(0) == 0 {
		t.Skip("device 0 has no virtual memory management")
	}
	return b
}

func freeBytes(t testing.TB, b *cuda.Backend) int64 {
	t.Helper()
	mi, err := b.MemInfo(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return mi.FreeBytes
}

// TestVirtualMemoryPiecesGoBackToTheDevice: mapped pieces are device
// memory (cuMemGetInfo drops by exactly their size), hold what is written
// to them, and each goes back to the device on its own while its
// neighbours keep their bytes.
func TestVirtualMemoryPiecesGoBackToTheDevice(t *testing.T) {
	ctx := context.Background()
	b := openVMM(t)
	g := b.Granularity(0)
	t.Logf("granularity %d", g)
	if off := open(t, cuda.Config{DisableVMM: true}); off.Granularity(0) != 0 {
		t.Errorf("DisableVMM: granularity %d, want 0", off.Granularity(0))
	}
	before := freeBytes(t, b)
	base, err := b.Reserve(ctx, 0, 4*GiB)
	if err != nil {
		t.Fatal(err)
	}
	if freeBytes(t, b) != before {
		t.Errorf("reserving address space took memory")
	}
	// 1 GiB in pieces of one chunk, then a piece of 64 MiB after it.
	for c := int64(0); c < GiB/g; c++ {
		if err := b.Map(ctx, 0, base+uint64(c*g), g); err != nil {
			t.Fatal(err)
		}
	}
	big := base + uint64(GiB)
	if err := b.Map(ctx, 0, big, 64*MiB); err != nil {
		t.Fatal(err)
	}
	if got := before - freeBytes(t, b); got != GiB+64*MiB {
		t.Errorf("mapping 1 GiB and 64 MiB took %d bytes", got)
	}
	if err := b.Map(ctx, 0, base, g); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("mapping a chunk twice: %v", err)
	}
	if err := b.Unmap(ctx, 0, big, g); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("unmapping part of a piece: %v", err)
	}
	at := device.Location{Device: 0, Kind: device.VRAM, Addr: base}
	want := pattern(GiB+64*MiB, 3)
	if err := b.Write(ctx, at, want); err != nil {
		t.Fatal(err)
	}
	for c := int64(1); c < GiB/g; c += 2 {
		if err := b.Unmap(ctx, 0, base+uint64(c*g), g); err != nil {
			t.Fatal(err)
		}
	}
	if got := before - freeBytes(t, b); got != GiB/2+64*MiB {
		t.Errorf("after unmapping every other chunk %d bytes are taken, want 576 MiB", got)
	}
	got := make([]byte, g)
	for c := int64(0); c < GiB/g+64*MiB/g; c++ {
		if c < GiB/g && c%2 == 1 {
			continue
		}
		loc := at
		loc.Addr += uint64(c * g)
		if err := b.Read(ctx, loc, got); err != nil || !bytes.Equal(got, want[c*g:(c+1)*g]) {
			t.Fatalf("chunk %d after its neighbours went: content differs (%v)", c, err)
		}
	}
	if err := b.Unreserve(ctx, 0, base, 4*GiB); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("unreserving with pieces mapped: %v", err)
	}
	for c := int64(0); c < GiB/g; c += 2 {
		if err := b.Unmap(ctx, 0, base+uint64(c*g), g); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Unmap(ctx, 0, big, 64*MiB); err != nil {
		t.Fatal(err)
	}
	if err := b.Unreserve(ctx, 0, base, 4*GiB); err != nil {
		t.Fatal(err)
	}
	if after := freeBytes(t, b); after != before {
		t.Errorf("free %d after everything went back, want %d", after, before)
	}
}

// smiUsed is nvidia-smi's used memory of GPU 0 in bytes, or -1 where there
// is no nvidia-smi.
func smiUsed(t testing.TB) int64 {
	out, err := exec.Command("nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0").Output()
	if err != nil {
		return -1
	}
	mib, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("nvidia-smi said %q", out)
	}
	return mib * MiB
}

// TestPoolOnVirtualMemoryReleasesWithoutMoving is the cases on the
// GPU: 100 blocks of 256 MiB, and of 8 MiB, every other one freed; the
// pool gives every free chunk back without a copy, and cuMemGetInfo and
// nvidia-smi show the drop.
func TestPoolOnVirtualMemoryReleasesWithoutMoving(t *testing.T) {
	ctx := context.Background()
	b := openVMM(t)
	for _, size := range []int64{256 * MiB, 8 * MiB} {
		p := alloc.NewMapped(mapper{source{b}}, 90*GiB, 0)
		var blocks []*alloc.Block
		for range 100 {
			blk, err := p.Alloc(ctx, size, 0)
			if err != nil {
				t.Fatal(err)
			}
			blocks = append(blocks, blk)
		}
		if s := p.Stats(); s.Segments != 1 || s.ReservedBytes != 100*size {
			t.Errorf("%d MiB blocks: %d segments mapping %d bytes, want one of %d", size/MiB, s.Segments, s.ReservedBytes, 100*size)
		}
		for i := 1; i < len(blocks); i += 2 {
			if err := p.Free(blocks[i]); err != nil {
				t.Fatal(err)
			}
		}
		free0, smi0 := freeBytes(t, b), smiUsed(t)
		start := time.Now()
		c, err := p.Compact(ctx, func(*alloc.Block) bool { return true }, func(context.Context, uint64, uint64, int64) error {
			t.Fatal("compaction on virtual memory copied")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_, released, err := p.Release(ctx)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		free1, smi1 := freeBytes(t, b), smiUsed(t)
		t.Logf("%d x %d MiB, every other freed: released %d bytes in %v, moved %d; cuMemGetInfo free +%d, nvidia-smi used %d -> %d",
			len(blocks), size/MiB, released, took, c.BytesMoved, free1-free0, smi0, smi1)
		if c.BytesMoved != 0 || released != 50*size || free1-free0 != released {
			t.Errorf("moved %d, released %d (want %d), free rose by %d", c.BytesMoved, released, 50*size, free1-free0)
		}
		if smi0 >= 0 && (smi0-smi1) < released-released/100 {
			t.Errorf("nvidia-smi: used %d -> %d, want a drop of %d", smi0, smi1, released)
		}
		for i := 0; i < len(blocks); i += 2 {
			_ = p.Free(blocks[i])
		}
		if _, _, err := p.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkColdAlloc1GiB puts a cold 1 GiB allocation through a pool on
// virtual memory (nothing mapped: it reserves address space, maps the
// pieces and sets their access) beside cuMemAlloc of 1 GiB, for pieces of
// at most 2 MiB (one chunk), 64, 256 and 512 MiB and 1 GiB, and times giving
// it back (free and release: unmapping; cuMemFree for raw) apart.
// "alone" cycles each kind by itself (each allocation follows the release
// of the same kind); "interleaved" times cuMemAlloc and then each pool in
// every iteration, so each allocation follows the others' releases, as on
// a busy device (the driver then takes longer over cuMemAlloc). Each
// reports the medians; interleaved also the allocation's ratio to raw.
func BenchmarkColdAlloc1GiB(b *testing.B) {
	ctx := context.Background()
	be := openVMM(b)
	pieces := []int64{2 * MiB, 64 * MiB, 256 * MiB, 512 * MiB, GiB}
	type cycle func() (take, give time.Duration, err error)
	pool := func(max int64) cycle {
		p := alloc.NewMapped(mapper{source{be}}, 90*GiB, max)
		return func() (take, give time.Duration, err error) {
			t0 := time.Now()
			blk, err := p.Alloc(ctx, GiB, 0)
			t1 := time.Now()
			if err != nil {
				return 0, 0, err
			}
			_ = p.Free(blk)
			_, _, err = p.Release(ctx)
			return t1.Sub(t0), time.Since(t1), err
		}
	}
	raw := func() (take, give time.Duration, err error) {
		t0 := time.Now()
		d, err := cu.MemAlloc(GiB)
		t1 := time.Now()
		if err != nil {
			return 0, 0, err
		}
		err = cu.MemFree(d)
		return t1.Sub(t0), time.Since(t1), err
	}
	kinds := map[string]cycle{"raw": raw}
	names := []string{"raw"}
	for _, max := range pieces {
		name := fmt.Sprintf("vmm%dMiB", max/MiB)
		kinds[name] = pool(max)
		names = append(names, name)
	}
	run := func(b *testing.B, names []string) (took, gave map[string][]time.Duration) {
		lockedContext(b, 0)
		took, gave = map[string][]time.Duration{}, map[string][]time.Duration{}
		for b.Loop() {
			for _, name := range names {
				t, g, err := kinds[name]()
				if err != nil {
					b.Fatal(err)
				}
				took[name] = append(took[name], t)
				gave[name] = append(gave[name], g)
			}
		}
		return took, gave
	}
	for _, name := range names {
		b.Run("alone/"+name, func(b *testing.B) {
			took, gave := run(b, []string{name})
			b.ReportMetric(float64(median(took[name]).Microseconds()), "alloc-µs")
			b.ReportMetric(float64(median(gave[name]).Microseconds()), "release-µs")
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		took, gave := run(b, names)
		r := median(took["raw"])
		b.ReportMetric(float64(r.Microseconds()), "raw-µs")
		b.ReportMetric(float64(median(gave["raw"]).Microseconds()), "raw-release-µs")
		for _, name := range names[1:] {
			v := median(took[name])
			b.ReportMetric(float64(v.Microseconds()), name+"-µs")
			b.ReportMetric(float64(v)/float64(r), name+"/raw")
			b.ReportMetric(float64(median(gave[name]).Microseconds()), name+"-release-µs")
		}
	})
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
