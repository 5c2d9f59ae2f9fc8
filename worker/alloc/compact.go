package alloc

import (
	"cmp"
	"context"
	"fmt"
	"slices"
)

// Mover copies n bytes from src to dst (addresses in the Source's space).
type Mover func(ctx context.Context, dst, src uint64, n int64) error

// Move records one relocated block: From is no longer valid, To holds the
// same bytes.
type Move struct {
	From, To *Block
}

// Compaction reports what Compact did.
type Compaction struct {
	Moves            []Move
	BytesMoved       int64
	SegmentsReleased int
	BytesReleased    int64
}

// Compact moves live blocks out of the least used segments into free space
// of the others, so whole segments empty and go back to the Source. Blocks
// for which movable says false stay put, and so do the segments holding
// them. Growable segments are left alone: Release gives their free chunks
// back in place, with nothing to move. It runs a Compactor to the end. A
// failed copy stops it; every block is valid either way (callers must
// follow Moves to learn the new blocks).
func (p *Pool) Compact(ctx context.Context, movable func(*Block) bool, move Mover) (Compaction, error) {
	var c Compaction
	k := p.Compactor(move)
	for {
		step, done, err := k.Step(ctx, movable)
		c.add(step)
		if err != nil || done {
			return c, err
		}
	}
}

// A Compactor compacts a pool a segment at a time, so its owner may let
// others use the pool between steps. It plans per size class (see plan)
// when it starts on the class, then evacuates the planned segments one per
// Step, in order, into the segments that stay.
type Compactor struct {
	p     *Pool
	move  Mover
	class int // 0: small not planned yet, 1: small planned, 2: large planned
	queue []*segment
	skip  map[*segment]bool
}

// Compactor returns a compactor of the pool that copies with move.
func (p *Pool) Compactor(move Mover) *Compactor { return &Compactor{p: p, move: move} }

// Step evacuates the next planned segment and releases it when it emptied.
// movable says which blocks may move now (the pool may have changed since
// the last step); a segment whose block may not move stops being
// evacuated. done reports that nothing is left to do.
func (k *Compactor) Step(ctx context.Context, movable func(*Block) bool) (c Compaction, done bool, err error) {
	for len(k.queue) == 0 {
		if k.class == 2 {
			return c, true, nil
		}
		k.queue = k.p.plan(k.class == 0, movable)
		k.skip = make(map[*segment]bool, len(k.queue))
		for _, s := range k.queue {
			k.skip[s] = true
		}
		k.class++
	}
	seg := k.queue[0]
	k.queue = k.queue[1:]
	if k.p.segments[seg.addr] != seg {
		return c, false, nil // released meanwhile
	}
	if err := k.p.evacuate(ctx, seg, k.skip, movable, k.move, &c); err != nil {
		return c, true, err
	}
	if b := seg.first; b.free && b.next == nil {
		k.p.uncache(b)
		if err := k.p.dropSegment(ctx, seg); err != nil {
			k.p.cache(b)
			return c, true, err
		}
		c.SegmentsReleased++
		c.BytesReleased += seg.size
	}
	return c, false, nil
}

func (c *Compaction) add(o Compaction) {
	c.Moves = append(c.Moves, o.Moves...)
	c.BytesMoved += o.BytesMoved
	c.SegmentsReleased += o.SegmentsReleased
	c.BytesReleased += o.BytesReleased
}

// PlanCompaction reports how many segments, of how many bytes, Compact
// would release now. It changes nothing.
func (p *Pool) PlanCompaction(movable func(*Block) bool) (segments int, bytes int64) {
	for _, small := range []bool{true, false} {
		for _, seg := range p.plan(small, movable) {
			segments++
			bytes += seg.size
		}
	}
	return segments, bytes
}

// plan picks the segments of a size class to evacuate: the k least used
// ones, for the largest k for which every live block of theirs fits, whole,
// in a free block of the segments that stay (largest blocks first, each in
// the smallest free block that holds it, what is left of that block staying
// free for the next). Segments with a block that may not move stay (and
// take blocks); empty ones are Release's business and take none.
func (p *Pool) plan(small bool, movable func(*Block) bool) []*segment {
	type usage struct {
		seg    *segment
		live   int64
		pinned bool
	}
	var cands, stay []usage
	for _, seg := range p.segments {
		if seg.small != small || seg.growable { // Release unmaps their free chunks in place
			continue
		}
		u := usage{seg: seg}
		for b := seg.first; b != nil; b = b.next {
			if !b.free {
				u.live += b.size
				u.pinned = u.pinned || !movable(b)
			}
		}
		switch {
		case u.live == 0:
		case u.pinned:
			stay = append(stay, u)
		default:
			cands = append(cands, u)
		}
	}
	// Least live bytes first; ties by address so plans are deterministic.
	slices.SortFunc(cands, func(a, b usage) int {
		return cmp.Or(cmp.Compare(a.live, b.live), cmp.Compare(a.seg.addr, b.seg.addr))
	})
	fits := func(k int) bool {
		var room, need []int64
		for _, u := range append(slices.Clone(stay), cands[k:]...) {
			for b := u.seg.first; b != nil; b = b.next {
				if b.free {
					room = append(room, b.size)
				}
			}
		}
		for _, u := range cands[:k] {
			for b := u.seg.first; b != nil; b = b.next {
				if !b.free {
					need = append(need, b.size+b.align-MinBlock)
				}
			}
		}
		slices.Sort(room)
		slices.SortFunc(need, func(a, b int64) int { return cmp.Compare(b, a) })
		for _, n := range need {
			i, _ := slices.BinarySearch(room, n)
			if i == len(room) {
				return false
			}
			left := room[i] - n
			room = slices.Delete(room, i, i+1)
			if left > 0 {
				at, _ := slices.BinarySearch(room, left)
				room = slices.Insert(room, at, left)
			}
		}
		return true
	}
	k := 0
	for k < len(cands) && fits(k+1) {
		k++
	}
	victims := make([]*segment, k)
	for i, u := range cands[:k] {
		victims[i] = u.seg
	}
	return victims
}

// evacuate moves every live block of seg into segments not in skip; it
// stops at a block that may not move (or finds no room), leaving seg.
func (p *Pool) evacuate(ctx context.Context, seg *segment, skip map[*segment]bool, movable func(*Block) bool, move Mover, c *Compaction) error {
	for b := seg.first; b != nil; {
		if b.free {
			b = b.next
			continue
		}
		if !movable(b) {
			return nil
		}
		dst := p.bestFit(seg.small, b.size+b.align-MinBlock, skip)
		if dst == nil {
			return nil // no room: seg stays, partly evacuated
		}
		to := p.carve(dst, b.size, b.align)
		if err := move(ctx, to.Addr(), b.Addr(), b.requested); err != nil {
			p.activate(to, 0, b.align)
			_ = p.Free(to)
			return fmt.Errorf("moving %d bytes from %#x to %#x: %w", b.requested, b.Addr(), to.Addr(), err)
		}
		p.activate(to, b.requested, b.align)
		prev := b.prev
		if err := p.Free(b); err != nil {
			return err
		}
		c.Moves = append(c.Moves, Move{From: b, To: to})
		c.BytesMoved += to.requested
		// Free merged b into prev when prev was free; go on after the
		// merged free block.
		if prev != nil && prev.free {
			b = prev
		}
		b = b.next
	}
	return nil
}
