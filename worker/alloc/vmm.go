package alloc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/btree"

	"github.com/memworker/memworker/worker/device"
)

// Mapper is a Source whose memory can also be reserved as address space and
// backed by physical memory where it is used (CUDA's virtual memory
// management: cuMemAddressReserve, cuMemCreate and cuMemMap). A pool over a
// Mapper grows segments in place and gives free memory back to the device
// without moving a live byte.
type Mapper interface {
	Source
	// Granularity is the size of a physical chunk (2 MiB on an H100): Map
	// and Unmap take ranges aligned to it and of a multiple of it.
	Granularity() int64
	// Reserve reserves size bytes of address space, backed by nothing.
	Reserve(ctx context.Context, size int64) (addr uint64, err error)
	// Unreserve gives back a reserved range that has nothing mapped.
	Unreserve(ctx context.Context, addr uint64, size int64) error
	// Map backs a reserved range with one piece of physical memory; Unmap
	// gives a piece Map made, whole, back to the device.
	Map(ctx context.Context, addr uint64, size int64) error
	Unmap(ctx context.Context, addr uint64, size int64) error
}

// DefaultMaxPiece bounds the pieces a pool maps: the driver's cost of
// mapping and unmapping grows with the number of pieces (on an H100 about
// 60-110 µs each to map and 45 µs to unmap; a cold 1 GiB allocation in pieces
// of 64 MiB took 3.9-5x cuMemAlloc, in pieces of 256 MiB 1.2-1.5x), while
// only whole pieces go back to the device (docs/h100/round2/vram-cycle).
const DefaultMaxPiece = 256 << 20

// growable is what a pool over a Mapper keeps: the Mapper, its chunk size,
// the largest piece it maps, the address space a segment reserves, and
// where its segments have room to map.
type growable struct {
	m        Mapper
	gran     int64
	maxPiece int64
	reserve  int64
	// holes are the unmapped blocks of each class ([0] large, [1] small)
	// by address: where the pool maps memory next, found without walking
	// the live blocks.
	holes [2]*btree.BTreeG[*Block]
}

// piece is physical memory mapped at an offset of a growable segment.
type piece struct{ off, size int64 }

// NewMapped returns an empty pool that serves from growable segments of m:
// each reserves reserve bytes of address space (rounded up to m's
// granularity; more when one request needs more) and maps memory as blocks
// need it, after what is already mapped or into a hole Release left, so a
// pool that grows keeps one segment per size class (PyTorch's expandable
// segments). Each range it maps is cut into pieces of m's granularity times
// a power of two, at offsets that are multiples of their size, at most
// maxPiece (0: DefaultMaxPiece). Release unmaps every piece under free
// space, and compaction moves nothing. AllocDedicated still takes segments
// of their own from m's Source side.
func NewMapped(m Mapper, reserve, maxPiece int64) *Pool {
	p := New(m)
	g := max(m.Granularity(), MinBlock)
	if maxPiece <= 0 {
		maxPiece = DefaultMaxPiece
	}
	p.vm = &growable{m: m, gran: g, maxPiece: max(maxPiece, g), reserve: max(roundUp(reserve, g), g)}
	for i := range p.vm.holes {
		p.vm.holes[i] = btree.NewG(16, func(a, b *Block) bool { return a.Addr() < b.Addr() })
	}
	return p
}

// Granularity is the chunk size of the pool's Mapper, 0 for a pool of
// segments of their own (New).
func (p *Pool) Granularity() int64 {
	if p.vm == nil {
		return 0
	}
	return p.vm.gran
}

func class(small bool) int {
	if small {
		return 1
	}
	return 0
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// grow maps a free block for size bytes at alignment into a growable
// segment of the class and returns it, out of every tree. When the device
// is out of memory it releases the pool's free chunks and tries once more.
func (p *Pool) grow(ctx context.Context, size, alignment int64, small bool) (*Block, error) {
	b, err := p.mapFor(ctx, size, alignment, small)
	if errors.Is(err, device.ErrOutOfMemory) {
		p.stats.OOMRetries++
		if _, _, rerr := p.Release(ctx); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		b, err = p.mapFor(ctx, size, alignment, small)
	}
	return b, err
}

// mapFor finds room for size bytes at alignment in the class's growable
// segments: the first unmapped range that, with the free mapped block
// before it, is long enough. It maps only the chunks that are missing.
// Without room it reserves a new segment.
func (p *Pool) mapFor(ctx context.Context, size, alignment int64, small bool) (*Block, error) {
	var found *Block
	var n int64
	p.vm.holes[class(small)].Ascend(func(u *Block) bool {
		start, front := u.Addr(), int64(0)
		if u.prev != nil && u.prev.free { // mapped: free neighbours of one kind merge
			start, front = u.prev.Addr(), u.prev.size
		}
		need := int64(alignUp(start, uint64(alignment))-start) + size
		if front+u.size >= need {
			found, n = u, roundUp(max(need-front, 1), p.vm.gran)
		}
		return found == nil
	})
	if found != nil {
		return p.mapIn(ctx, found, n)
	}
	// A new segment starts at a chunk boundary, aligned for any request.
	n = roundUp(size, p.vm.gran)
	reserve := max(p.vm.reserve, n)
	addr, err := p.vm.m.Reserve(ctx, reserve)
	if err != nil {
		return nil, fmt.Errorf("reserving %d bytes of address space: %w", reserve, err)
	}
	seg := &segment{addr: addr, size: reserve, small: small, growable: true}
	seg.first = &Block{seg: seg, size: reserve, free: true, unmapped: true}
	p.vm.holes[class(small)].ReplaceOrInsert(seg.first)
	p.segments[addr] = seg
	p.stats.Segments++
	p.stats.SegmentAllocs++
	b, err := p.mapIn(ctx, seg.first, n)
	if err != nil {
		_ = p.dropSegment(ctx, seg) // nothing mapped: only address space
	}
	return b, err
}

// mapIn maps the first n bytes of the unmapped block u and returns them
// merged with the free mapped blocks around them, out of every tree.
func (p *Pool) mapIn(ctx context.Context, u *Block, n int64) (*Block, error) {
	if err := p.mapPieces(ctx, u.seg, u.offset, n); err != nil {
		return nil, err
	}
	holes := p.vm.holes[class(u.seg.small)]
	holes.Delete(u)
	if n < u.size {
		holes.ReplaceOrInsert(p.split(u, n)) // the rest stays unmapped
	}
	u.unmapped = false
	p.mapped(n)
	return p.coalesce(u), nil
}

// mapPieces maps [off, off+n) of seg in pieces, all or none.
func (p *Pool) mapPieces(ctx context.Context, seg *segment, off, n int64) error {
	var done []piece
	for at := off; at < off+n; {
		size := p.vm.gran
		for size < p.vm.maxPiece && at%(2*size) == 0 && at+2*size <= off+n {
			size *= 2
		}
		if err := p.vm.m.Map(ctx, seg.addr+uint64(at), size); err != nil {
			for _, pc := range done {
				_ = p.vm.m.Unmap(ctx, seg.addr+uint64(pc.off), pc.size)
			}
			return err
		}
		done = append(done, piece{at, size})
		at += size
	}
	i, _ := slices.BinarySearchFunc(seg.pieces, off, cmpPiece)
	seg.pieces = slices.Insert(seg.pieces, i, done...)
	return nil
}

func cmpPiece(pc piece, off int64) int { return cmp.Compare(pc.off, off) }

// mapped counts n bytes mapped (negative: unmapped) as held.
func (p *Pool) mapped(n int64) {
	p.stats.ReservedBytes += n
	p.stats.PeakReservedBytes = max(p.stats.PeakReservedBytes, p.stats.ReservedBytes)
}

// unmapFree gives back to the device every piece under the free blocks of a
// growable segment, and reports how many bytes went back. A free block
// keeps its mapped edges (parts of pieces that are partly in use) cached.
func (p *Pool) unmapFree(ctx context.Context, seg *segment) (bytes int64, err error) {
	for b := seg.first; b != nil; b = b.next {
		i, j := p.piecesUnder(b)
		k := i
		for ; k < j; k++ {
			pc := seg.pieces[k]
			if uerr := p.vm.m.Unmap(ctx, seg.addr+uint64(pc.off), pc.size); uerr != nil {
				err = errors.Join(err, uerr)
				break
			}
		}
		if k == i {
			continue
		}
		lo, hi := seg.pieces[i].off, seg.pieces[k-1].off+seg.pieces[k-1].size
		seg.pieces = slices.Delete(seg.pieces, i, k)
		p.uncache(b)
		mid := b
		if front := lo - b.offset; front > 0 {
			mid = p.split(b, front)
			p.cache(b)
		}
		if mid.size > hi-lo {
			p.cache(p.split(mid, hi-lo))
		}
		mid.unmapped = true
		p.mapped(-(hi - lo))
		bytes += hi - lo
		holes := p.vm.holes[class(seg.small)]
		if prev := mid.prev; prev != nil && prev.free && prev.unmapped {
			p.merge(prev, mid)
			mid = prev
		} else {
			holes.ReplaceOrInsert(mid)
		}
		if next := mid.next; next != nil && next.free && next.unmapped {
			holes.Delete(next)
			p.merge(mid, next)
		}
		b = mid
	}
	return bytes, err
}

// piecesUnder is the run [i, j) of the segment's pieces that lie wholly
// under a free mapped block of a growable segment (empty when none).
func (p *Pool) piecesUnder(b *Block) (i, j int) {
	if !b.free || b.unmapped || !b.seg.growable {
		return 0, 0
	}
	pcs := b.seg.pieces
	i, _ = slices.BinarySearchFunc(pcs, b.offset, cmpPiece)
	for j = i; j < len(pcs) && pcs[j].off+pcs[j].size <= b.offset+b.size; j++ {
	}
	return i, j
}

// bare reports a growable segment that holds no mapped memory.
func (s *segment) bare() bool {
	return s.growable && s.first.unmapped && s.first.next == nil
}

// releasable is what Release would give back to the device now: the bytes
// of empty segments and, in growable segments, of pieces under free space.
func (p *Pool) releasable() (segments int, bytes int64) {
	for _, seg := range p.segments {
		if !seg.growable {
			if seg.first.free && seg.first.next == nil {
				segments++
				bytes += seg.size
			}
			continue
		}
		empty := true
		for b := seg.first; b != nil; b = b.next {
			i, j := p.piecesUnder(b)
			for _, pc := range seg.pieces[i:j] {
				bytes += pc.size
			}
			empty = empty && b.free
		}
		if empty {
			segments++
		}
	}
	return segments, bytes
}
