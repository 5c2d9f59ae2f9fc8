package alloc

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/btree"

	"github.com/memworker/memworker/worker/device"
)

// Source is where a Pool gets its segments: one kind of memory of one device.
type Source interface {
	AllocSegment(ctx context.Context, size int64) (addr uint64, err error)
	FreeSegment(ctx context.Context, addr uint64) error
}

// Size classes, as in PyTorch's caching allocator.
const (
	MinBlock      = 512       // allocation granularity
	SmallSize     = 1 << 20   // largest request served by the small pool
	SmallSegment  = 2 << 20   // segment size of the small pool
	LargeSegment  = 20 << 20  // segment size for large requests under MinLargeAlloc
	MinLargeAlloc = 10 << 20  // requests from here on get their own segment
	RoundLarge    = 2 << 20   // rounding of own segments
	maxSize       = 1<<62 - 1 // guards rounding arithmetic
)

// ErrInvalid is returned for sizes or alignments the pool cannot serve.
var ErrInvalid = errors.New("invalid allocation request")

// Pool is a pooling allocator over one Source.
type Pool struct {
	src      Source
	small    *btree.BTreeG[*Block]
	large    *btree.BTreeG[*Block]
	segments map[uint64]*segment
	stats    Stats
	probe    Block     // search key for bestFit, kept to spare an allocation
	vm       *growable // set by NewMapped
}

type segment struct {
	addr      uint64
	size      int64
	small     bool
	dedicated bool    // one block, never shared, returned on free
	growable  bool    // reserved address space, mapped where used (vmm.go)
	pieces    []piece // of a growable segment: what is mapped, by offset
	first     *Block
}

// Block is a contiguous range of a segment, handed out by Alloc or cached
// free in the pool.
type Block struct {
	seg        *segment
	offset     int64
	size       int64
	requested  int64
	align      int64
	free       bool
	unmapped   bool // free address space of a growable segment, in no tree
	prev, next *Block
}

// Addr is the block's address in the Source's address space.
func (b *Block) Addr() uint64 { return b.seg.addr + uint64(b.offset) }

// Size is the block's size after rounding (what it reserves).
func (b *Block) Size() int64 { return b.size }

// Requested is the size asked for at Alloc.
func (b *Block) Requested() int64 { return b.requested }

// SegmentAddr is the address of the segment holding the block.
func (b *Block) SegmentAddr() uint64 { return b.seg.addr }

// New returns an empty pool over src.
func New(src Source) *Pool {
	return &Pool{
		probe:    Block{seg: &segment{}},
		src:      src,
		small:    btree.NewG(16, lessBlock),
		large:    btree.NewG(16, lessBlock),
		segments: make(map[uint64]*segment),
	}
}

func lessBlock(a, b *Block) bool {
	if a.size != b.size {
		return a.size < b.size
	}
	return a.Addr() < b.Addr()
}

// RoundSize is the block size a request of size bytes reserves.
func RoundSize(size int64) int64 {
	if size < MinBlock {
		return MinBlock
	}
	return (size + MinBlock - 1) / MinBlock * MinBlock
}

// segmentSize is the size of a new segment for a block of size bytes.
func segmentSize(size int64) int64 {
	switch {
	case size <= SmallSize:
		return SmallSegment
	case size < MinLargeAlloc:
		return LargeSegment
	default:
		return (size + RoundLarge - 1) / RoundLarge * RoundLarge
	}
}

func (p *Pool) tree(small bool) *btree.BTreeG[*Block] {
	if small {
		return p.small
	}
	return p.large
}

// Alloc hands out a block of at least size bytes whose address is a multiple
// of alignment (0 or a power of two; 512 and less are implied). It reuses a
// cached block when one fits (best fit), else asks the Source for a segment;
// when the Source is out of memory it releases the pool's empty segments and
// tries once more.
func (p *Pool) Alloc(ctx context.Context, size, alignment int64) (*Block, error) {
	if size <= 0 || size > maxSize/2 {
		return nil, fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	if alignment < 0 || alignment&(alignment-1) != 0 || alignment > RoundLarge {
		return nil, fmt.Errorf("%w: alignment %d", ErrInvalid, alignment)
	}
	if alignment < MinBlock {
		alignment = MinBlock
	}
	rounded := RoundSize(size)
	// Worst-case padding to reach the alignment inside a free block.
	need := rounded + alignment - MinBlock
	small := need <= SmallSize
	p.stats.AllocRequests++

	b := p.bestFit(small, need)
	switch {
	case b != nil:
		p.stats.CacheHits++
	case p.vm != nil:
		var err error
		if b, err = p.grow(ctx, rounded, alignment, small); err != nil {
			return nil, err
		}
	default:
		seg, err := p.alignedSegment(ctx, rounded, need, alignment, small)
		if err != nil {
			return nil, err
		}
		b = seg.first
	}
	b = p.carve(b, rounded, alignment)
	p.activate(b, size, alignment)
	return b, nil
}

// AllocDedicated hands out a block with a segment of its own (size rounded
// up to 2 MiB): nothing else is ever carved from that segment, and freeing
// the block returns the segment to the Source at once. Memory shared with
// other processes uses it, so a handle to the segment exposes that block
// alone.
func (p *Pool) AllocDedicated(ctx context.Context, size int64) (*Block, error) {
	if size <= 0 || size > maxSize/2 {
		return nil, fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	p.stats.AllocRequests++
	segSize := (RoundSize(size) + RoundLarge - 1) / RoundLarge * RoundLarge
	seg, err := p.newSegment(ctx, segSize, false)
	if err != nil {
		return nil, err
	}
	seg.dedicated = true
	b := seg.first
	b.free = false
	p.activate(b, size, MinBlock)
	return b, nil
}

// activate counts a carved block as handed out.
func (p *Pool) activate(b *Block, requested, alignment int64) {
	b.requested, b.align = requested, alignment
	p.stats.AllocatedBytes += b.size
	p.stats.RequestedBytes += requested
	p.stats.ActiveBlocks++
	p.stats.PeakAllocatedBytes = max(p.stats.PeakAllocatedBytes, p.stats.AllocatedBytes)
}

// bestFit removes and returns the smallest cached block of at least need
// bytes outside the segments in skip, or nil.
func (p *Pool) bestFit(small bool, need int64, skip ...map[*segment]bool) *Block {
	var found *Block
	p.probe.size = need
	p.tree(small).AscendGreaterOrEqual(&p.probe, func(b *Block) bool {
		if len(skip) > 0 && skip[0][b.seg] {
			return true
		}
		found = b
		return false
	})
	if found != nil {
		p.tree(small).Delete(found)
		p.stats.CachedBlocks--
	}
	return found
}

// alignedSegment gets a new segment for a block of rounded bytes at the
// given alignment. Sources hand out segments aligned to 2 MiB or more, so it
// first asks without room for padding, and only when the address falls short
// of the alignment trades that segment for one with room (need bytes).
func (p *Pool) alignedSegment(ctx context.Context, rounded, need, alignment int64, small bool) (*segment, error) {
	seg, err := p.newSegment(ctx, segmentSize(rounded), small)
	if err != nil || int64(alignUp(seg.addr, uint64(alignment))-seg.addr)+rounded <= seg.size {
		return seg, err
	}
	if err := p.dropSegment(ctx, seg); err != nil {
		return nil, err
	}
	return p.newSegment(ctx, segmentSize(need), small)
}

func (p *Pool) newSegment(ctx context.Context, size int64, small bool) (*segment, error) {
	addr, err := p.src.AllocSegment(ctx, size)
	if errors.Is(err, device.ErrOutOfMemory) {
		p.stats.OOMRetries++
		if _, _, rerr := p.Release(ctx); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		addr, err = p.src.AllocSegment(ctx, size)
	}
	if err != nil {
		return nil, err
	}
	seg := &segment{addr: addr, size: size, small: small}
	seg.first = &Block{seg: seg, size: size, free: true}
	p.segments[addr] = seg
	p.stats.Segments++
	p.stats.SegmentAllocs++
	p.stats.ReservedBytes += size
	p.stats.PeakReservedBytes = max(p.stats.PeakReservedBytes, p.stats.ReservedBytes)
	return seg, nil
}

// carve cuts the aligned range of size bytes out of the free block b (not
// in any tree), caches what is left before and after it, and returns the
// in-use block.
func (p *Pool) carve(b *Block, size, alignment int64) *Block {
	if pad := int64(alignUp(b.Addr(), uint64(alignment)) - b.Addr()); pad > 0 {
		front := b
		b = p.split(front, pad)
		p.cache(front)
	}
	if p.shouldSplit(b, size) {
		p.cache(p.split(b, size))
	}
	b.free = false
	return b
}

// split cuts b after its first n bytes and returns the remainder, linked
// after b.
func (p *Pool) split(b *Block, n int64) *Block {
	rest := &Block{seg: b.seg, offset: b.offset + n, size: b.size - n, free: true, unmapped: b.unmapped, prev: b, next: b.next}
	if b.next != nil {
		b.next.prev = rest
	}
	b.next = rest
	b.size = n
	return rest
}

func (p *Pool) shouldSplit(b *Block, size int64) bool {
	rest := b.size - size
	if b.seg.small {
		return rest >= MinBlock
	}
	return rest > SmallSize
}

func (p *Pool) cache(b *Block) {
	b.free = true
	b.requested = 0
	p.tree(b.seg.small).ReplaceOrInsert(b)
	p.stats.CachedBlocks++
}

func (p *Pool) uncache(b *Block) {
	if _, ok := p.tree(b.seg.small).Delete(b); ok {
		p.stats.CachedBlocks--
	}
}

// Free returns b to the pool's cache, merging it with free neighbours. The
// segment stays reserved until Release. Freeing a block twice is an error
// and changes nothing.
func (p *Pool) Free(b *Block) error {
	if b == nil || b.free || p.segments[b.seg.addr] != b.seg {
		return fmt.Errorf("%w: block is not allocated from this pool", ErrInvalid)
	}
	p.stats.AllocatedBytes -= b.size
	p.stats.RequestedBytes -= b.requested
	p.stats.ActiveBlocks--
	if b.seg.dedicated {
		b.free = true
		return p.dropSegment(context.Background(), b.seg)
	}
	p.cache(p.coalesce(b))
	return nil
}

// coalesce merges b, out of every tree, with its free mapped neighbours
// (taking them out of theirs) and returns the merged block.
func (p *Pool) coalesce(b *Block) *Block {
	if prev := b.prev; prev != nil && prev.free && !prev.unmapped {
		p.uncache(prev)
		p.merge(prev, b)
		b = prev
	}
	if next := b.next; next != nil && next.free && !next.unmapped {
		p.uncache(next)
		p.merge(b, next)
	}
	return b
}

// merge makes b's neighbour next part of b.
func (p *Pool) merge(b, next *Block) {
	b.size += next.size
	b.next = next.next
	if next.next != nil {
		next.next.prev = b
	}
}

// Release returns every segment that holds no allocated block to the Source
// and, in growable segments, unmaps every free whole chunk (a segment left
// with nothing mapped gives its address space back too). It reports how
// many segments and bytes of memory went back.
func (p *Pool) Release(ctx context.Context) (segments int, bytes int64, err error) {
	return p.ReleaseAbove(ctx, 0)
}

// ReleaseAbove is Release that stops once the pool caches keep bytes or
// fewer (memory held but not allocated), segment by segment; keep 0
// releases all, address space too.
func (p *Pool) ReleaseAbove(ctx context.Context, keep int64) (segments int, bytes int64, err error) {
	for _, seg := range p.segments {
		if keep > 0 && p.stats.ReservedBytes-p.stats.AllocatedBytes <= keep {
			break
		}
		if seg.growable {
			n, uerr := p.unmapFree(ctx, seg)
			bytes += n
			err = errors.Join(err, uerr)
			if seg.bare() {
				if derr := p.dropSegment(ctx, seg); derr != nil {
					err = errors.Join(err, derr)
					continue
				}
				segments++
			}
			continue
		}
		b := seg.first
		if !b.free || b.next != nil {
			continue
		}
		p.uncache(b)
		if ferr := p.dropSegment(ctx, seg); ferr != nil {
			p.cache(b)
			err = errors.Join(err, ferr)
			continue
		}
		segments++
		bytes += seg.size
	}
	return segments, bytes, err
}

// Grow adds a segment of at least size bytes (rounded up to 2 MiB) to the
// cache, from the Source, and returns its address: memory made ready
// before anyone asks for it.
func (p *Pool) Grow(ctx context.Context, size int64) (uint64, error) {
	if size <= 0 || size > maxSize/2 {
		return 0, fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	seg, err := p.newSegment(ctx, (RoundSize(size)+RoundLarge-1)/RoundLarge*RoundLarge, false)
	if err != nil {
		return 0, err
	}
	p.cache(seg.first)
	return seg.addr, nil
}

// Idle is the size of the segment at addr when it holds no allocated
// block (0: it holds some, or is not the pool's).
func (p *Pool) Idle(addr uint64) int64 {
	seg, ok := p.segments[addr]
	if !ok || !seg.first.free || seg.first.next != nil {
		return 0
	}
	return seg.size
}

// ReleaseSegment returns the segment at addr to the Source when it holds
// no allocated block, and reports the bytes that went back (0: it holds
// some, or is not the pool's). Segments on virtual memory are left to
// Release.
func (p *Pool) ReleaseSegment(ctx context.Context, addr uint64) (int64, error) {
	seg, ok := p.segments[addr]
	if !ok || seg.growable {
		return 0, nil
	}
	b := seg.first
	if !b.free || b.next != nil {
		return 0, nil
	}
	p.uncache(b)
	if err := p.dropSegment(ctx, seg); err != nil {
		p.cache(b)
		return 0, err
	}
	return seg.size, nil
}

// dropSegment returns an empty segment, whose block is in no tree, to the
// Source.
func (p *Pool) dropSegment(ctx context.Context, seg *segment) error {
	if seg.growable {
		if err := p.vm.m.Unreserve(ctx, seg.addr, seg.size); err != nil {
			return err
		}
		p.vm.holes[class(seg.small)].Delete(seg.first)
	} else {
		if err := p.src.FreeSegment(ctx, seg.addr); err != nil {
			return err
		}
		p.stats.ReservedBytes -= seg.size
	}
	delete(p.segments, seg.addr)
	p.stats.Segments--
	p.stats.SegmentFrees++
	return nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }
