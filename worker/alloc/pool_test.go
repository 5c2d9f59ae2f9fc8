package alloc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/memworker/memworker/worker/device"
)

// fakeSource hands out 2 MiB-aligned segments up to a capacity.
type fakeSource struct {
	capacity, used int64
	next           uint64
	live           map[uint64]int64
}

func newSource(capacity int64) *fakeSource {
	return &fakeSource{capacity: capacity, next: 1 << 40, live: map[uint64]int64{}}
}

func (s *fakeSource) AllocSegment(_ context.Context, size int64) (uint64, error) {
	if s.used+size > s.capacity {
		return 0, fmt.Errorf("segment of %d: %w", size, device.ErrOutOfMemory)
	}
	addr := s.next
	s.next += uint64(alignUp(uint64(size), RoundLarge))
	s.used += size
	s.live[addr] = size
	return addr, nil
}

func (s *fakeSource) FreeSegment(_ context.Context, addr uint64) error {
	size, ok := s.live[addr]
	if !ok {
		return device.ErrNotFound
	}
	delete(s.live, addr)
	s.used -= size
	return nil
}

// check verifies the pool's invariants: blocks tile every segment without
// gaps or overlap, no two free blocks are neighbours, the trees hold exactly
// the free blocks, and the counters agree with the blocks and the source.
func check(t *testing.T, p *Pool, src *fakeSource) {
	t.Helper()
	var allocated, requested, reserved int64
	var active, cached int
	for addr, seg := range p.segments {
		if src.live[addr] != seg.size {
			t.Fatalf("segment %#x: pool size %d, source %d", addr, seg.size, src.live[addr])
		}
		reserved += seg.size
		var off int64
		var prev *Block
		for b := seg.first; b != nil; b = b.next {
			if b.offset != off || b.prev != prev || b.seg != seg || b.size <= 0 {
				t.Fatalf("segment %#x: block at %d breaks the tiling", addr, b.offset)
			}
			if b.free {
				cached++
				if prev != nil && prev.free {
					t.Fatalf("segment %#x: free neighbours at %d not coalesced", addr, b.offset)
				}
				if _, ok := p.tree(seg.small).Get(b); !ok {
					t.Fatalf("free block at %#x is not cached", b.Addr())
				}
			} else {
				active++
				allocated += b.size
				requested += b.requested
			}
			off += b.size
			prev = b
		}
		if off != seg.size {
			t.Fatalf("segment %#x: blocks cover %d of %d bytes", addr, off, seg.size)
		}
	}
	if got := p.small.Len() + p.large.Len(); got != cached {
		t.Fatalf("trees hold %d blocks, segments %d free blocks", got, cached)
	}
	s := p.Stats()
	if s.AllocatedBytes != allocated || s.RequestedBytes != requested || s.ReservedBytes != reserved ||
		s.ActiveBlocks != active || s.CachedBlocks != cached || s.Segments != len(p.segments) {
		t.Fatalf("stats %+v disagree with blocks: allocated %d requested %d reserved %d active %d cached %d",
			s, allocated, requested, reserved, active, cached)
	}
	if src.used != reserved {
		t.Fatalf("source holds %d bytes, pool reserves %d", src.used, reserved)
	}
}

func TestRoundingAndSegmentSizes(t *testing.T) {
	tests := []struct {
		size, wantBlock, wantSegment int64
	}{
		{1, 512, SmallSegment},
		{512, 512, SmallSegment},
		{513, 1024, SmallSegment},
		{1 << 20, 1 << 20, SmallSegment},
		{1<<20 + 1, 1<<20 + 512, LargeSegment},
		{9 << 20, 9 << 20, LargeSegment},
		{10 << 20, 10 << 20, 10 << 20},
		{11<<20 + 1, 12 << 20, 12 << 20}, // a tail under 1 MiB is not split off
		{1 << 30, 1 << 30, 1 << 30},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.size), func(t *testing.T) {
			src := newSource(4 << 30)
			p := New(src)
			b, err := p.Alloc(context.Background(), tt.size, 0)
			if err != nil {
				t.Fatal(err)
			}
			if b.Size() != tt.wantBlock || b.Requested() != tt.size {
				t.Errorf("block size %d requested %d, want %d and %d", b.Size(), b.Requested(), tt.wantBlock, tt.size)
			}
			if got := p.Stats().ReservedBytes; got != tt.wantSegment {
				t.Errorf("reserved %d, want %d", got, tt.wantSegment)
			}
			check(t, p, src)
		})
	}
}

func TestFreedBlocksAreReusedAndCoalesced(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	a, _ := p.Alloc(ctx, 4096, 0)
	b, _ := p.Alloc(ctx, 4096, 0)
	c, _ := p.Alloc(ctx, 4096, 0)
	if p.Stats().SegmentAllocs != 1 {
		t.Fatalf("three small blocks took %d segments, want 1", p.Stats().SegmentAllocs)
	}
	if b.Addr() != a.Addr()+4096 || c.Addr() != b.Addr()+4096 {
		t.Fatalf("blocks not packed: %#x %#x %#x", a.Addr(), b.Addr(), c.Addr())
	}
	addrB := b.Addr()
	if err := p.Free(b); err != nil {
		t.Fatal(err)
	}
	check(t, p, src)
	d, _ := p.Alloc(ctx, 4000, 0)
	if d.Addr() != addrB {
		t.Errorf("reallocation got %#x, want the freed block %#x (best fit)", d.Addr(), addrB)
	}
	for _, blk := range []*Block{a, c, d} {
		if err := p.Free(blk); err != nil {
			t.Fatal(err)
		}
	}
	check(t, p, src)
	f := p.Fragmentation()
	if f.FreeBlocks != 1 || f.LargestFree != SmallSegment || f.Ratio != 0 {
		t.Errorf("after freeing everything: %+v, want one free block of the whole segment", f)
	}
	if s := p.Stats(); s.CacheHits != 3 || s.AllocRequests != 4 {
		t.Errorf("cache hits %d of %d requests, want 3 of 4", s.CacheHits, s.AllocRequests)
	}
}

func TestDoubleFreeIsRefused(t *testing.T) {
	src := newSource(1 << 30)
	p := New(src)
	b, _ := p.Alloc(context.Background(), 100, 0)
	if err := p.Free(b); err != nil {
		t.Fatal(err)
	}
	before := p.Stats()
	if err := p.Free(b); !errors.Is(err, ErrInvalid) {
		t.Fatalf("double free: %v, want ErrInvalid", err)
	}
	if p.Stats() != before {
		t.Errorf("double free changed stats: %+v -> %+v", before, p.Stats())
	}
	check(t, p, src)
}

func TestAlignment(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	_, _ = p.Alloc(ctx, 512, 0) // push the next free offset off alignment
	for _, align := range []int64{0, 256, 512, 4096, 65536, 1 << 20, 2 << 20} {
		b, err := p.Alloc(ctx, 1000, align)
		if err != nil {
			t.Fatalf("align %d: %v", align, err)
		}
		if align > 0 && b.Addr()%uint64(align) != 0 {
			t.Errorf("align %d: address %#x", align, b.Addr())
		}
		check(t, p, src)
	}
	for _, bad := range []int64{-1, 3, 1000, 4 << 20} {
		if _, err := p.Alloc(ctx, 100, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("align %d: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestOutOfMemoryReleasesCacheAndRetries(t *testing.T) {
	ctx := context.Background()
	src := newSource(64 << 20)
	p := New(src)
	small, _ := p.Alloc(ctx, 4096, 0) // a 2 MiB segment
	big, err := p.Alloc(ctx, 40<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Free(big) // 40 MiB cached, 62 MiB reserved
	_ = p.Free(small)
	// 50 MiB does not fit beside the cached 42 MiB; the pool must release
	// its empty segments and retry.
	b, err := p.Alloc(ctx, 50<<20, 0)
	if err != nil {
		t.Fatalf("alloc after release: %v", err)
	}
	if s := p.Stats(); s.OOMRetries != 1 || s.ReservedBytes != 50<<20 {
		t.Errorf("stats %+v, want one OOM retry and 50 MiB reserved", s)
	}
	check(t, p, src)
	if _, err := p.Alloc(ctx, 20<<20, 0); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("alloc beyond capacity: %v, want ErrOutOfMemory", err)
	}
	check(t, p, src)
	_ = p.Free(b)
}

func TestReleaseReturnsOnlyEmptySegments(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	keep, _ := p.Alloc(ctx, 4096, 0)
	big, _ := p.Alloc(ctx, 32<<20, 0)
	_ = p.Free(big)
	n, bytes, err := p.Release(ctx)
	if err != nil || n != 1 || bytes != 32<<20 {
		t.Fatalf("release: %d segments %d bytes %v, want 1 segment of 32 MiB", n, bytes, err)
	}
	check(t, p, src)
	if keep.Addr() == 0 || p.Stats().Segments != 1 {
		t.Errorf("segment with a live block was released")
	}
}

// TestRandomWorkload drives the pool with random allocations and frees and
// checks every invariant after each step.
func TestRandomWorkload(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	src := newSource(2 << 30)
	p := New(src)
	var live []*Block
	sizes := []int64{1, 511, 4096, 100_000, 1 << 20, 3 << 20, 12 << 20, 64 << 20}
	for i := 0; i < 3000; i++ {
		switch r := rng.IntN(10); {
		case r < 6 || len(live) == 0:
			size := sizes[rng.IntN(len(sizes))] + rng.Int64N(1000)
			align := []int64{0, 4096, 1 << 20}[rng.IntN(3)]
			b, err := p.Alloc(ctx, size, align)
			if errors.Is(err, device.ErrOutOfMemory) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			live = append(live, b)
		case r < 9:
			j := rng.IntN(len(live))
			if err := p.Free(live[j]); err != nil {
				t.Fatal(err)
			}
			live = append(live[:j], live[j+1:]...)
		case i%2 == 0:
			if _, _, err := p.Release(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			c, err := p.Compact(ctx, func(*Block) bool { return true }, func(context.Context, uint64, uint64, int64) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			for _, mv := range c.Moves {
				j := slices.Index(live, mv.From)
				if j < 0 {
					t.Fatal("compaction moved a block that is not live")
				}
				live[j] = mv.To
			}
		}
		check(t, p, src)
	}
	for _, b := range live {
		_ = p.Free(b)
	}
	_, _, _ = p.Release(ctx)
	check(t, p, src)
	if src.used != 0 {
		t.Errorf("after freeing and releasing everything the source still holds %d bytes", src.used)
	}
}

// BenchmarkCachedAllocFree1MiB measures the hot path: a 1 MiB block served
// from the cache and freed back, by a pool of segments and by a mapped one.
func BenchmarkCachedAllocFree1MiB(b *testing.B) {
	ctx := context.Background()
	for name, p := range map[string]*Pool{
		"segments": New(newSource(1 << 30)),
		"mapped":   NewMapped(newMapper(1<<30), 1<<30, 0),
	} {
		b.Run(name, func(b *testing.B) {
			warm, _ := p.Alloc(ctx, 1<<20, 0)
			_ = p.Free(warm)
			b.ReportAllocs()
			for b.Loop() {
				blk, err := p.Alloc(ctx, 1<<20, 0)
				if err != nil {
					b.Fatal(err)
				}
				_ = p.Free(blk)
			}
		})
	}
}

// unalignedSource hands out segments 512 bytes past a 2 MiB boundary, as a
// Source that only promises 512-byte alignment might.
type unalignedSource struct{ *fakeSource }

func (s unalignedSource) AllocSegment(ctx context.Context, size int64) (uint64, error) {
	addr, err := s.fakeSource.AllocSegment(ctx, size)
	if err != nil {
		return 0, err
	}
	delete(s.live, addr)
	s.live[addr+512] = size
	return addr + 512, nil
}

func (s unalignedSource) FreeSegment(ctx context.Context, addr uint64) error {
	return s.fakeSource.FreeSegment(ctx, addr)
}

func TestNewSegmentsNeedNoPaddingOnAlignedSources(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	b, err := p.Alloc(ctx, 64<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats().ReservedBytes != 64<<20 || b.Addr()%(1<<20) != 0 {
		t.Errorf("64 MiB aligned to 1 MiB reserved %d at %#x, want one 64 MiB segment", p.Stats().ReservedBytes, b.Addr())
	}

	usrc := unalignedSource{newSource(1 << 30)}
	up := New(usrc)
	ub, err := up.Alloc(ctx, 64<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if ub.Addr()%(1<<20) != 0 || up.Stats().SegmentFrees != 1 || usrc.used != up.Stats().ReservedBytes {
		t.Errorf("unaligned source: block at %#x, stats %+v, source holds %d", ub.Addr(), up.Stats(), usrc.used)
	}
}

func TestDedicatedBlocksOwnTheirSegment(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	b, err := p.AllocDedicated(ctx, 3<<20+5)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() != b.SegmentAddr() || b.Size() != 4<<20 || p.Stats().Segments != 1 {
		t.Fatalf("dedicated block at %#x in %#x of %d bytes", b.Addr(), b.SegmentAddr(), b.Size())
	}
	check(t, p, src)
	// Nothing else lands in a dedicated segment.
	other, _ := p.Alloc(ctx, 4096, 0)
	if other.SegmentAddr() == b.SegmentAddr() {
		t.Error("a small block was carved from a dedicated segment")
	}
	if err := p.Free(b); err != nil {
		t.Fatal(err)
	}
	check(t, p, src)
	if p.Stats().Segments != 1 || src.used != SmallSegment {
		t.Errorf("freeing a dedicated block kept its segment: %+v", p.Stats())
	}
}
