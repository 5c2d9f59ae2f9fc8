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
// them. It goes step by step (CompactStep) until no step makes progress. A
// failed copy stops it; every block is valid either way (callers must
// follow Moves to learn the new blocks).
func (p *Pool) Compact(ctx context.Context, movable func(*Block) bool, move Mover) (Compaction, error) {
	var c Compaction
	// Each step releases a segment or ends; the bound is insurance.
	for steps := 2*len(p.segments) + 1; steps > 0; steps-- {
		step, done, err := p.CompactStep(ctx, movable, move)
		c.add(step)
		if err != nil || done {
			return c, err
		}
	}
	return c, nil
}

// CompactStep is one step of Compact: it plans from the pool as it is now
// and evacuates one segment, so a caller may let others use the pool
// between steps. It plans per size class: the k least used segments whose
// live bytes fit in the free space of the rest are the candidates, and the
// first is evacuated into the rest only, then released. done reports that
// there is nothing (more) to gain.
func (p *Pool) CompactStep(ctx context.Context, movable func(*Block) bool, move Mover) (c Compaction, done bool, err error) {
	for _, small := range []bool{true, false} {
		victims := p.plan(small, movable)
		if len(victims) == 0 {
			continue
		}
		skip := make(map[*segment]bool, len(victims))
		for _, s := range victims {
			skip[s] = true
		}
		seg := victims[0]
		if err := p.evacuate(ctx, seg, skip, move, &c); err != nil {
			return c, true, err
		}
		if b := seg.first; b.free && b.next == nil {
			p.uncache(b)
			if err := p.dropSegment(ctx, seg); err != nil {
				p.cache(b)
				return c, true, err
			}
			c.SegmentsReleased++
			c.BytesReleased += seg.size
		}
		// A step that could move nothing (no block fits elsewhere) ends
		// the compaction rather than planning the same segment again.
		return c, len(c.Moves) == 0 && c.SegmentsReleased == 0, nil
	}
	return c, true, nil
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

// plan picks the segments of a size class to evacuate: least live bytes
// first, as long as every live block of each fits, whole, in a free block
// of the segments that stay (best fit, as evacuate places them; what a
// placement leaves of a free block stays for the next). Segments with a
// block that may not move, and empty ones (Release's business, not a
// destination either), take no part.
func (p *Pool) plan(small bool, movable func(*Block) bool) []*segment {
	type usage struct {
		seg    *segment
		live   int64
		pinned bool
	}
	var all []usage
	for _, seg := range p.segments {
		if seg.small != small {
			continue
		}
		u := usage{seg: seg}
		for b := seg.first; b != nil; b = b.next {
			if !b.free {
				u.live += b.size
				u.pinned = u.pinned || !movable(b)
			}
		}
		if u.live > 0 {
			all = append(all, u)
		}
	}
	// Least live bytes first; ties by address so plans are deterministic.
	slices.SortFunc(all, func(a, b usage) int {
		return cmp.Or(cmp.Compare(a.live, b.live), cmp.Compare(a.seg.addr, b.seg.addr))
	})
	// room holds the free block sizes of the segments that stay, sorted.
	var room []int64
	for _, u := range all {
		for b := u.seg.first; b != nil; b = b.next {
			if b.free {
				room = insertSorted(room, b.size)
			}
		}
	}
	var victims []*segment
	for _, u := range all {
		if u.pinned {
			continue
		}
		// Evacuating u takes its own free blocks out of the room.
		trial := slices.Clone(room)
		for b := u.seg.first; b != nil; b = b.next {
			if b.free {
				trial = removeSorted(trial, b.size)
			}
		}
		fits := true
		for b := u.seg.first; b != nil && fits; b = b.next {
			if b.free {
				continue
			}
			need := b.size + b.align - MinBlock
			k, _ := slices.BinarySearch(trial, need)
			if k == len(trial) {
				fits = false
				break
			}
			left := trial[k] - need
			trial = slices.Delete(trial, k, k+1)
			if left > 0 {
				trial = insertSorted(trial, left)
			}
		}
		if !fits {
			break
		}
		victims = append(victims, u.seg)
		room = trial
	}
	return victims
}

func insertSorted(s []int64, v int64) []int64 {
	k, _ := slices.BinarySearch(s, v)
	return slices.Insert(s, k, v)
}

func removeSorted(s []int64, v int64) []int64 {
	if k, ok := slices.BinarySearch(s, v); ok {
		return slices.Delete(s, k, k+1)
	}
	return s
}

// evacuate moves every live block of seg into segments not in skip.
func (p *Pool) evacuate(ctx context.Context, seg *segment, skip map[*segment]bool, move Mover, c *Compaction) error {
	for b := seg.first; b != nil; {
		if b.free {
			b = b.next
			continue
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
