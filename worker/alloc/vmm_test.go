package alloc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/memworker/memworker/worker/device"
)

const gran = 2 << 20

// fakeMapper is a device with virtual memory: reserved ranges, and the
// pieces mapped in them, up to a capacity shared with its plain segments.
type fakeMapper struct {
	*fakeSource
	reserved map[uint64]int64 // by base
	chunks   map[uint64]bool  // mapped chunks by address
	pieces   map[uint64]int64 // what Map was given, by address
}

func newMapper(capacity int64) *fakeMapper {
	return &fakeMapper{fakeSource: newSource(capacity), reserved: map[uint64]int64{}, chunks: map[uint64]bool{}, pieces: map[uint64]int64{}}
}

func (m *fakeMapper) Granularity() int64 { return gran }

func (m *fakeMapper) Reserve(_ context.Context, size int64) (uint64, error) {
	addr := m.next
	m.next += uint64(roundUp(size, gran)) + gran // a gap: segments never touch
	m.reserved[addr] = size
	return addr, nil
}

func (m *fakeMapper) Unreserve(_ context.Context, addr uint64, size int64) error {
	if m.reserved[addr] != size {
		return fmt.Errorf("no reservation of %d at %#x: %w", size, addr, device.ErrNotFound)
	}
	for c := addr; c < addr+uint64(size); c += gran {
		if m.chunks[c] {
			return fmt.Errorf("unreserving %#x with chunk %#x mapped", addr, c)
		}
	}
	delete(m.reserved, addr)
	return nil
}

// span checks that [addr, addr+size) is whole chunks of one reservation.
func (m *fakeMapper) span(addr uint64, size int64) error {
	if addr%gran != 0 || size <= 0 || size%gran != 0 {
		return fmt.Errorf("range %#x+%d is not whole chunks", addr, size)
	}
	for base, n := range m.reserved {
		if addr >= base && addr+uint64(size) <= base+uint64(n) {
			return nil
		}
	}
	return fmt.Errorf("range %#x+%d is outside every reservation", addr, size)
}

func (m *fakeMapper) Map(_ context.Context, addr uint64, size int64) error {
	if err := m.span(addr, size); err != nil {
		return err
	}
	if m.used+size > m.capacity {
		return fmt.Errorf("mapping %d: %w", size, device.ErrOutOfMemory)
	}
	for c := addr; c < addr+uint64(size); c += gran {
		if m.chunks[c] {
			return fmt.Errorf("chunk %#x is mapped twice", c)
		}
		m.chunks[c] = true
	}
	m.used += size
	m.pieces[addr] = size
	return nil
}

func (m *fakeMapper) Unmap(_ context.Context, addr uint64, size int64) error {
	if m.pieces[addr] != size {
		return fmt.Errorf("unmapping %#x+%d, which is not a piece Map made", addr, size)
	}
	delete(m.pieces, addr)
	for c := addr; c < addr+uint64(size); c += gran {
		if !m.chunks[c] {
			return fmt.Errorf("chunk %#x is not mapped", c)
		}
		delete(m.chunks, c)
	}
	m.used -= size
	return nil
}

// checkMapped verifies a mapped pool's invariants: blocks tile every
// segment, unmapped blocks are free whole chunks in no tree, the mapper
// has exactly the chunks under the other blocks mapped, free neighbours of
// one kind are merged, and the counters agree.
func checkMapped(t *testing.T, p *Pool, m *fakeMapper) {
	t.Helper()
	var allocated, reserved int64
	var cached, holes int
	mapped := map[uint64]bool{}
	for addr, seg := range p.segments {
		if !seg.growable {
			if m.live[addr] != seg.size {
				t.Fatalf("segment %#x: pool size %d, source %d", addr, seg.size, m.live[addr])
			}
			reserved += seg.size
		} else if m.reserved[addr] != seg.size {
			t.Fatalf("growable segment %#x: pool size %d, reservation %d", addr, seg.size, m.reserved[addr])
		}
		var off, segMapped int64
		var prev *Block
		for b := seg.first; b != nil; b = b.next {
			if b.offset != off || b.prev != prev || b.seg != seg || b.size <= 0 {
				t.Fatalf("segment %#x: block at %d breaks the tiling", addr, b.offset)
			}
			_, inTree := p.tree(seg.small).Get(b)
			switch {
			case b.unmapped:
				holes++
				if _, ok := p.vm.holes[class(seg.small)].Get(b); !ok || !b.free || inTree || b.Addr()%gran != 0 || b.size%gran != 0 {
					t.Fatalf("unmapped block %#x+%d: indexed %v, free %v, cached %v, not whole chunks", b.Addr(), b.size, ok, b.free, inTree)
				}
			case b.free:
				cached++
				if !inTree {
					t.Fatalf("free block at %#x is not cached", b.Addr())
				}
			default:
				allocated += b.size
			}
			if prev != nil && prev.free && b.free && prev.unmapped == b.unmapped {
				t.Fatalf("segment %#x: free neighbours at %d not merged", addr, b.offset)
			}
			if seg.growable && !b.unmapped {
				segMapped += b.size
				for c := b.Addr() &^ (gran - 1); c < b.Addr()+uint64(b.size); c += gran {
					mapped[c] = true
				}
			}
			off += b.size
			prev = b
		}
		var pieces int64
		for i, pc := range seg.pieces {
			if m.pieces[seg.addr+uint64(pc.off)] != pc.size || pc.off%pc.size != 0 || pc.size > p.vm.maxPiece ||
				(i > 0 && seg.pieces[i-1].off+seg.pieces[i-1].size > pc.off) {
				t.Fatalf("segment %#x: piece %+v is not what was mapped, or out of order", addr, pc)
			}
			pieces += pc.size
		}
		if off != seg.size || (seg.growable && segMapped > pieces) {
			t.Fatalf("segment %#x: blocks cover %d of %d bytes, %d mapped under blocks, pieces of %d", addr, off, seg.size, segMapped, pieces)
		}
		reserved += pieces
	}
	if n := p.vm.holes[0].Len() + p.vm.holes[1].Len(); n != holes {
		t.Fatalf("%d holes indexed, %d unmapped blocks", n, holes)
	}
	for c := range mapped {
		if !m.chunks[c] {
			t.Fatalf("chunk %#x under a block is not mapped", c)
		}
	}
	if len(mapped) != len(m.chunks) {
		t.Fatalf("the mapper has %d chunks mapped, the blocks cover %d", len(m.chunks), len(mapped))
	}
	s := p.Stats()
	if s.AllocatedBytes != allocated || s.ReservedBytes != reserved || s.CachedBlocks != cached ||
		s.Segments != len(p.segments) || p.small.Len()+p.large.Len() != cached {
		t.Fatalf("stats %+v disagree with blocks: allocated %d reserved %d cached %d", s, allocated, reserved, cached)
	}
	if m.used != reserved {
		t.Fatalf("the device holds %d bytes, the pool reserves %d", m.used, reserved)
	}
}

func TestGrowableSegmentsGrowInPlace(t *testing.T) {
	ctx := context.Background()
	m := newMapper(64 << 30)
	p := NewMapped(m, 40<<30, 0)
	var want int64
	for i, size := range []int64{256 << 20, 8 << 20, 3 << 20, 300 << 20, 13 << 20} {
		for range 20 {
			b, err := p.Alloc(ctx, size, 0)
			if err != nil {
				t.Fatalf("allocation %d: %v", i, err)
			}
			want += b.Size()
		}
	}
	checkMapped(t, p, m)
	s := p.Stats()
	if s.Segments != 1 {
		t.Errorf("100 large allocations took %d segments, want 1 growing in place", s.Segments)
	}
	// Only what the blocks need is mapped: the last chunk's tail at most.
	if s.ReservedBytes < want || s.ReservedBytes >= want+gran {
		t.Errorf("the pool maps %d bytes for %d allocated", s.ReservedBytes, want)
	}
	for range 100 {
		if _, err := p.Alloc(ctx, 4096, 0); err != nil {
			t.Fatal(err)
		}
	}
	checkMapped(t, p, m)
	if s := p.Stats(); s.Segments != 2 || s.ReservedBytes-want > 2*gran {
		t.Errorf("100 small allocations: %d segments, %d bytes mapped beyond the large ones; want one more segment of one chunk", s.Segments, s.ReservedBytes-want)
	}
}

// TestReleaseUnmapsFreeChunksWithoutMoving is the fragmentation
// cases: every other block freed, then release and compaction give every
// free chunk back and move nothing.
func TestReleaseUnmapsFreeChunksWithoutMoving(t *testing.T) {
	for _, size := range []int64{256 << 20, 8 << 20, 1 << 20, 3<<20 + 4096} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			ctx := context.Background()
			m := newMapper(64 << 30)
			p := NewMapped(m, 40<<30, 0)
			var blocks []*Block
			for range 100 {
				b, err := p.Alloc(ctx, size, 0)
				if err != nil {
					t.Fatal(err)
				}
				blocks = append(blocks, b)
			}
			var live []*Block
			addrs := map[*Block]uint64{}
			for i, b := range blocks {
				if i%2 == 1 {
					if err := p.Free(b); err != nil {
						t.Fatal(err)
					}
					continue
				}
				live = append(live, b)
				addrs[b] = b.Addr()
			}
			before := p.Stats().ReservedBytes
			wantFree := p.Fragmentation().ReleasableBytes
			c, err := p.Compact(ctx, func(*Block) bool { return true }, func(context.Context, uint64, uint64, int64) error {
				t.Fatal("compaction of growable segments copied")
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.BytesMoved != 0 || len(c.Moves) != 0 || c.BytesReleased != 0 {
				t.Errorf("compaction moved %d bytes in %d moves and released %d", c.BytesMoved, len(c.Moves), c.BytesReleased)
			}
			_, released, err := p.Release(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkMapped(t, p, m)
			if released != wantFree || before-released != p.Stats().ReservedBytes {
				t.Errorf("released %d bytes, releasable was %d, mapped %d -> %d", released, wantFree, before, p.Stats().ReservedBytes)
			}
			// What stays mapped is the live blocks and, around them, less
			// than a chunk on each side.
			var liveBytes int64
			for _, b := range live {
				liveBytes += b.Size()
				if b.Addr() != addrs[b] {
					t.Fatalf("a live block moved")
				}
			}
			if got := p.Stats().ReservedBytes; got < liveBytes || got > liveBytes+int64(len(live))*gran {
				t.Errorf("after release %d bytes mapped for %d live", got, liveBytes)
			}
			if size%gran == 0 && p.Stats().ReservedBytes != liveBytes {
				t.Errorf("blocks of whole chunks: %d bytes mapped for %d live", p.Stats().ReservedBytes, liveBytes)
			}
			// The holes serve new blocks without a new segment.
			segs := p.Stats().Segments
			for range 50 {
				if _, err := p.Alloc(ctx, size, 0); err != nil {
					t.Fatal(err)
				}
			}
			checkMapped(t, p, m)
			if p.Stats().Segments != segs || p.Stats().ReservedBytes != before {
				t.Errorf("refilling the holes: %d segments (was %d), %d mapped (was %d)", p.Stats().Segments, segs, p.Stats().ReservedBytes, before)
			}
		})
	}
}

func TestAnEmptyGrowablePoolGivesEverythingBack(t *testing.T) {
	ctx := context.Background()
	m := newMapper(1 << 30)
	p := NewMapped(m, 512<<20, 0)
	var blocks []*Block
	for _, size := range []int64{100, 1 << 20, 5 << 20, 600 << 20} { // the last needs a reservation of its own
		b, err := p.Alloc(ctx, size, 0)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, b)
	}
	if p.Stats().Segments != 3 {
		t.Fatalf("%d segments, want small, large and one for the 600 MiB block", p.Stats().Segments)
	}
	for _, b := range blocks {
		if err := p.Free(b); err != nil {
			t.Fatal(err)
		}
	}
	if f := p.Fragmentation(); f.EmptySegments != 3 || f.ReleasableBytes != p.Stats().ReservedBytes {
		t.Errorf("fragmentation %+v: want 3 empty segments and all %d bytes releasable", f, p.Stats().ReservedBytes)
	}
	n, bytes, err := p.Release(ctx)
	if err != nil || n != 3 || bytes != 2<<20+6<<20+600<<20 {
		t.Errorf("release: %d segments, %d bytes, %v", n, bytes, err)
	}
	checkMapped(t, p, m)
	if len(m.reserved) != 0 || m.used != 0 {
		t.Errorf("the device still has %d reservations and %d bytes", len(m.reserved), m.used)
	}
}

func TestMappingOutOfMemoryReleasesFreeChunksAndRetries(t *testing.T) {
	ctx := context.Background()
	m := newMapper(100 << 20)
	p := NewMapped(m, 1<<30, 0)
	a, _ := p.Alloc(ctx, 40<<20, 0)
	b, _ := p.Alloc(ctx, 40<<20, 0)
	_ = p.Free(a)
	// 40 MiB are free in the pool, 20 on the device: 50 fit after a
	// release, in the hole and past b.
	c, err := p.Alloc(ctx, 50<<20, 0)
	if err != nil {
		t.Fatalf("allocation needing a release: %v", err)
	}
	checkMapped(t, p, m)
	if p.Stats().OOMRetries != 1 || c.Addr() == b.Addr() {
		t.Errorf("oom retries %d", p.Stats().OOMRetries)
	}
	if _, err := p.Alloc(ctx, 20<<20, 0); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("past the device's memory: %v, want out of memory", err)
	}
	checkMapped(t, p, m)
}

func TestDedicatedBlocksOfAMappedPoolAreSegments(t *testing.T) {
	ctx := context.Background()
	m := newMapper(1 << 30)
	p := NewMapped(m, 1<<30, 0)
	b, err := p.AllocDedicated(ctx, 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	if m.live[b.SegmentAddr()] != 4<<20 || len(m.chunks) != 0 {
		t.Errorf("dedicated block: %d bytes of plain segment, %d chunks mapped", m.live[b.SegmentAddr()], len(m.chunks))
	}
	checkMapped(t, p, m)
	_ = p.Free(b)
	checkMapped(t, p, m)
}

// TestRandomMappedWorkload drives a mapped pool with random allocations,
// frees, releases and compactions, checking every invariant after each.
func TestRandomMappedWorkload(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	m := newMapper(2 << 30)
	p := NewMapped(m, 1<<30, 0)
	var live []*Block
	sizes := []int64{1, 511, 4096, 100_000, 1 << 20, 3 << 20, 12 << 20, 64 << 20, 700 << 20}
	for i := 0; i < 3000; i++ {
		switch r := rng.IntN(12); {
		case r < 6 || len(live) == 0:
			size := sizes[rng.IntN(len(sizes))] + rng.Int64N(1000)
			align := []int64{0, 4096, 1 << 20, 2 << 20}[rng.IntN(4)]
			var b *Block
			var err error
			if r == 0 {
				b, err = p.AllocDedicated(ctx, size)
			} else {
				b, err = p.Alloc(ctx, size, align)
			}
			if errors.Is(err, device.ErrOutOfMemory) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Addr()%uint64(max(align, MinBlock)) != 0 {
				t.Fatalf("block %#x is not aligned to %d", b.Addr(), align)
			}
			live = append(live, b)
		case r < 10:
			j := rng.IntN(len(live))
			if err := p.Free(live[j]); err != nil {
				t.Fatal(err)
			}
			live = append(live[:j], live[j+1:]...)
		case r == 10:
			if _, _, err := p.Release(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			c, err := p.Compact(ctx, func(*Block) bool { return true }, func(context.Context, uint64, uint64, int64) error {
				t.Fatal("a mapped pool copied")
				return nil
			})
			if err != nil || c.BytesMoved != 0 {
				t.Fatal(err)
			}
		}
		checkMapped(t, p, m)
	}
	for _, b := range live {
		_ = p.Free(b)
	}
	_, _, _ = p.Release(ctx)
	checkMapped(t, p, m)
	if m.used != 0 || len(m.reserved) != 0 {
		t.Errorf("after freeing and releasing everything the device holds %d bytes in %d reservations", m.used, len(m.reserved))
	}
}

// TestOnlyWholePiecesGoBack: memory goes back to the device a piece at a
// time, so a piece partly in use stays mapped. With pieces of one chunk
// (maxPiece = the granularity) every free chunk goes back; with larger
// pieces, what lies in a piece beside a live block stays cached.
func TestOnlyWholePiecesGoBack(t *testing.T) {
	for _, tc := range []struct {
		maxPiece, want int64
	}{
		{gran, 1<<30 - 80<<20},      // all but the ten 8 MiB blocks
		{64 << 20, 1<<30 - 128<<20}, // all but the two 64 MiB pieces they lie in
		{1 << 30, 0},                // one piece, partly in use
	} {
		ctx := context.Background()
		m := newMapper(4 << 30)
		p := NewMapped(m, 4<<30, tc.maxPiece)
		big, err := p.Alloc(ctx, 1<<30, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := int64(len(m.pieces)); got != (1<<30)/min(tc.maxPiece, 1<<30) {
			t.Errorf("max piece %d: 1 GiB mapped in %d pieces", tc.maxPiece, got)
		}
		_ = p.Free(big)
		for range 10 {
			if _, err := p.Alloc(ctx, 8<<20, 0); err != nil {
				t.Fatal(err)
			}
		}
		if p.Fragmentation().ReleasableBytes != tc.want {
			t.Errorf("max piece %d: %d bytes releasable, want %d", tc.maxPiece, p.Fragmentation().ReleasableBytes, tc.want)
		}
		_, released, err := p.Release(ctx)
		if err != nil || released != tc.want {
			t.Errorf("max piece %d: released %d (%v), want %d", tc.maxPiece, released, err, tc.want)
		}
		checkMapped(t, p, m)
	}
}

// BenchmarkGrowMany allocates 4 KiB blocks until 200,000 are live: a
// mapped pool maps a chunk every 512 of them, and finding where must not
// cost a walk over the blocks already there.
func BenchmarkGrowMany(b *testing.B) {
	for b.Loop() {
		ctx := context.Background()
		p := NewMapped(newMapper(8<<30), 8<<30, 0)
		for range 200_000 {
			if _, err := p.Alloc(ctx, 4096, 0); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// failingMapper fails its Map calls from the nth on, as a device out of
// memory part way through a range would.
type failingMapper struct {
	*fakeMapper
	calls, failFrom int
}

func (m *failingMapper) Map(ctx context.Context, addr uint64, size int64) error {
	m.calls++
	if m.calls >= m.failFrom {
		return fmt.Errorf("injected: %w", device.ErrOutOfMemory)
	}
	return m.fakeMapper.Map(ctx, addr, size)
}

// TestAMappingThatFailsPartWayLeavesNothingMapped: a range mapped in
// pieces is mapped whole or not at all; the pool and the device agree
// after the failure, and the next allocation works.
func TestAMappingThatFailsPartWayLeavesNothingMapped(t *testing.T) {
	ctx := context.Background()
	m := &failingMapper{fakeMapper: newMapper(4 << 30), failFrom: 4}
	p := NewMapped(m, 4<<30, 0)
	keep, err := p.Alloc(ctx, 8<<20, 0) // one piece
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Alloc(ctx, 1<<30, 0); !errors.Is(err, device.ErrOutOfMemory) { // 16 pieces: the third fails
		t.Fatalf("a mapping that fails part way: %v", err)
	}
	checkMapped(t, p, m.fakeMapper)
	if got := p.Stats().ReservedBytes; got != 8<<20 || len(m.pieces) != 1 {
		t.Errorf("after the failure %d bytes mapped in %d pieces, want the 8 MiB block's alone", got, len(m.pieces))
	}
	m.failFrom = 1 << 30
	b, err := p.Alloc(ctx, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkMapped(t, p, m.fakeMapper)
	_ = p.Free(b)
	_ = p.Free(keep)
	if _, _, err := p.Release(ctx); err != nil {
		t.Fatal(err)
	}
	checkMapped(t, p, m.fakeMapper)
	if m.used != 0 {
		t.Errorf("the device still holds %d bytes", m.used)
	}
}
