package alloc

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// memory gives a fakeSource real bytes, by segment address.
type memory struct {
	src  *fakeSource
	data map[uint64][]byte
}

func (m *memory) at(addr uint64, n int64) []byte {
	for base, size := range m.src.live {
		if addr >= base && addr+uint64(n) <= base+uint64(size) {
			if m.data[base] == nil {
				m.data[base] = make([]byte, size)
			}
			off := addr - base
			return m.data[base][off : off+uint64(n)]
		}
	}
	panic("address outside every segment")
}

func (m *memory) move(_ context.Context, dst, src uint64, n int64) error {
	copy(m.at(dst, n), m.at(src, n))
	return nil
}

func fill(m *memory, b *Block, seed byte) {
	p := m.at(b.Addr(), b.Requested())
	for i := range p {
		p[i] = seed + byte(i%251)
	}
}

func TestCompactEmptiesSegmentsAndKeepsContent(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	m := &memory{src: src, data: map[uint64][]byte{}}
	p := New(src)
	var blocks []*Block
	for i := 0; i < 64; i++ { // 8 small segments of 8 blocks each
		b, err := p.Alloc(ctx, 256<<10-100, 0)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, b)
	}
	live := map[*Block]byte{}
	for i, b := range blocks {
		if i%8 == 1 || i%8 == 6 { // keep two per segment, scattered
			live[b] = byte(i)
			fill(m, b, byte(i))
		} else if err := p.Free(b); err != nil {
			t.Fatal(err)
		}
	}
	before := p.Fragmentation()
	if p.Stats().Segments != 8 || before.Ratio < 0.5 {
		t.Fatalf("setup: %d segments, fragmentation %+v", p.Stats().Segments, before)
	}
	c, err := p.Compact(ctx, func(*Block) bool { return true }, m.move)
	if err != nil {
		t.Fatal(err)
	}
	check(t, p, src)
	if c.SegmentsReleased != 6 || p.Stats().Segments != 2 || len(c.Moves) != 12 {
		t.Errorf("compaction %+v left %d segments, want 12 moves releasing 6 of 8", c, p.Stats().Segments)
	}
	for _, mv := range c.Moves {
		seed, ok := live[mv.From]
		if !ok {
			t.Fatal("moved a block that was not live")
		}
		delete(live, mv.From)
		live[mv.To] = seed
	}
	for b, seed := range live {
		want := make([]byte, b.Requested())
		for i := range want {
			want[i] = seed + byte(i%251)
		}
		if !bytes.Equal(m.at(b.Addr(), b.Requested()), want) {
			t.Fatalf("block %#x lost its content", b.Addr())
		}
	}
	if after := p.Fragmentation(); after.Ratio != 0 || after.FreeBytes != 0 {
		t.Errorf("after compaction: %+v, want two full segments", after)
	}
}

func TestCompactLeavesUnmovableBlocks(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	m := &memory{src: src, data: map[uint64][]byte{}}
	p := New(src)
	a, _ := p.Alloc(ctx, 30<<20, 0) // own segments
	b, _ := p.Alloc(ctx, 30<<20, 0)
	_, _ = p.Alloc(ctx, 12<<20, 0)
	pinned := map[*Block]bool{a: true, b: true}
	c, err := p.Compact(ctx, func(x *Block) bool { return !pinned[x] }, m.move)
	if err != nil {
		t.Fatal(err)
	}
	for _, mv := range c.Moves {
		if pinned[mv.From] {
			t.Errorf("moved an unmovable block")
		}
	}
	check(t, p, src)
}

func TestCompactStopsOnACopyFailure(t *testing.T) {
	ctx := context.Background()
	src := newSource(1 << 30)
	p := New(src)
	var all, keep []*Block
	for i := 0; i < 16; i++ {
		b, _ := p.Alloc(ctx, 256<<10, 0)
		all = append(all, b)
	}
	for i, b := range all {
		if i%4 == 0 {
			keep = append(keep, b)
		} else {
			_ = p.Free(b)
		}
	}
	boom := errors.New("copy engine fault")
	_, err := p.Compact(ctx, func(*Block) bool { return true }, func(context.Context, uint64, uint64, int64) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Compact = %v, want the copy error", err)
	}
	check(t, p, src)
	if p.Stats().ActiveBlocks != len(keep) {
		t.Errorf("%d active blocks after a failed move, want %d", p.Stats().ActiveBlocks, len(keep))
	}
}

// TestPlanPlacesWholeBlocks: compaction plans by whether each live block
// fits, whole, in a free block of a segment that stays, not by free bytes.
func TestPlanPlacesWholeBlocks(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name         string
		size         int64 // of each block, two to a 20 MiB segment
		keep         func(i int) bool
		pinned       func(i int) bool
		wantSegments int
	}{
		// Each 20 MiB segment keeps one 8 MiB block and has 12 MiB free:
		// half of them fit in the other half.
		{"8 MiB blocks, every other freed", 8 * mib, func(i int) bool { return i%2 == 0 }, nil, 10},
		// One 9 MiB block kept per segment, 11 MiB free: each free range
		// takes one block, so again half.
		{"9 MiB blocks, every other freed", 9 * mib, func(i int) bool { return i%2 == 0 }, nil, 10},
		// Every block kept: 2 MiB free per segment, 40 MiB in all, yet no
		// 9 MiB block fits anywhere.
		{"full segments, free bytes in small pieces", 9 * mib, func(int) bool { return true }, nil, 0},
		// Segments holding a block that may not move stay, and take a
		// moved block each: still 10 of the 18 others can go.
		{"pinned segments stay", 8 * mib, func(i int) bool { return i%2 == 0 }, func(i int) bool { return i < 4 }, 10},
		// With most segments pinned, only as many as the room they leave.
		{"mostly pinned", 8 * mib, func(i int) bool { return i%2 == 0 }, func(i int) bool { return i < 36 }, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			p := New(newSource(1 << 30))
			pinned := map[*Block]bool{}
			var blocks []*Block
			for range 40 {
				b, err := p.Alloc(ctx, tt.size, 0)
				if err != nil {
					t.Fatal(err)
				}
				blocks = append(blocks, b)
			}
			for i, b := range blocks {
				if !tt.keep(i) {
					if err := p.Free(b); err != nil {
						t.Fatal(err)
					}
				} else if tt.pinned != nil && tt.pinned(i) {
					pinned[b] = true
				}
			}
			segs, _ := p.PlanCompaction(func(b *Block) bool { return !pinned[b] })
			if segs != tt.wantSegments {
				t.Errorf("plan releases %d segments, want %d", segs, tt.wantSegments)
			}
		})
	}
}
