package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Defragment compacts the VRAM pool and reports the fragmentation before
// and after. It goes a segment at a time and calls yield between segments
// (when not nil), where its owner may let other requests use the device:
// each step plans from the ledger as it is then.
func (d *Device) Defragment(ctx context.Context, yield func()) (subjects.DefragmentReply, error) {
	start := time.Now()
	before := fragmentation(d.pools[device.VRAM].Fragmentation())
	c, unmoved, err := d.compact(ctx, yield)
	if err != nil {
		return subjects.DefragmentReply{}, err
	}
	return subjects.DefragmentReply{
		Before:             *before,
		After:              *fragmentation(d.pools[device.VRAM].Fragmentation()),
		BlocksMoved:        len(c.Moves),
		BytesMoved:         c.BytesMoved,
		SegmentsReleased:   c.SegmentsReleased,
		ReleasedBytes:      c.BytesReleased,
		UnmovedAllocations: unmoved,
		DurationSeconds:    time.Since(start).Seconds(),
	}, nil
}

// compact compacts the device's VRAM pool: first the empty cached segments
// go back to the device (no copy), then, a segment at a time, live blocks
// of sparsely used segments move (bytes copied by the backend) where they
// fit whole, and the emptied segments go back too. Allocation ids stay; their
// blocks change. Allocations being transferred or exported do not move.
// yield, when not nil, runs between steps. unmoved counts the allocations
// that could not move when it started.
func (d *Device) compact(ctx context.Context, yield func()) (c alloc.Compaction, unmoved int, err error) {
	for _, a := range d.owners() {
		if !a.relocatable() {
			unmoved++
		}
	}
	mover := func(ctx context.Context, dst, src uint64, n int64) error {
		return d.backend.Copy(ctx,
			device.Location{Device: d.index, Kind: device.VRAM, Addr: dst},
			device.Location{Device: d.index, Kind: device.VRAM, Addr: src}, n)
	}
	pool := d.pools[device.VRAM]
	n, bytes, err := pool.Release(ctx)
	c.SegmentsReleased, c.BytesReleased = n, bytes
	if err != nil {
		return c, unmoved, fmt.Errorf("defragmenting %s: %w", d.id, err)
	}
	k := pool.Compactor(mover)
	for {
		owners := d.owners()
		step, done, err := k.Step(ctx, movableIn(owners))
		// Follow the moves, also when the step stopped half way.
		for _, mv := range step.Moves {
			a := owners[mv.From]
			d.account(a, -1)
			a.block, a.rsv = mv.To, mv.To.Size()
			d.account(a, 1)
			owners[mv.To] = a
			delete(owners, mv.From)
		}
		c.Moves = append(c.Moves, step.Moves...)
		c.BytesMoved += step.BytesMoved
		c.SegmentsReleased += step.SegmentsReleased
		c.BytesReleased += step.BytesReleased
		if err != nil {
			return c, unmoved, fmt.Errorf("defragmenting %s: %w", d.id, err)
		}
		if done {
			break
		}
		if yield != nil {
			yield()
		}
	}
	return c, unmoved, nil
}

// offload moves a resident VRAM allocation's bytes to pinned host memory of
// the same device and frees its VRAM block (which stays cached in the pool
// until released).
func (d *Device) offload(ctx context.Context, a *allocation, now time.Time) error {
	return d.relocate(ctx, []*allocation{a}, device.Pinned, now)
}

// relocate moves the bytes of allocations to memory of kind (VRAM to
// pinned host memory: an offload; back: a restore), all or none: blocks
// for all are found first, then every copy is made, and only then do the
// entries change and their old blocks go back to their pool. A failure
// leaves every allocation where it was. Ids never change.
func (d *Device) relocate(ctx context.Context, allocs []*allocation, kind device.Kind, now time.Time) error {
	return d.relocateTimed(ctx, allocs, kind, now, &phases{})
}

// moveChunk is the piece size of a pipelined move.
const moveChunk = 256 << 20

// copy copies n bytes for a move, pipelined where the backend can.
func (d *Device) copy(ctx context.Context, dst, src device.Location, n int64) error {
	if cc, ok := d.backend.(ChunkCopier); ok {
		return cc.CopyChunks(ctx, dst, src, n, moveChunk, func(int64) {})
	}
	return d.backend.Copy(ctx, dst, src, n)
}

// phases adds up where the time of moves went: reserving the destinations
// (setup: with pinned memory newly page-locked, part of it goes on while
// the copy runs) and copying.
type phases struct {
	setup, copy time.Duration
	bytes       int64
}

func (d *Device) relocateTimed(ctx context.Context, allocs []*allocation, kind device.Kind, now time.Time, ph *phases) error {
	t0 := time.Now()
	for _, a := range allocs {
		if a.kind == kind || !a.relocatable() {
			return fmt.Errorf("allocation %s cannot move now: %w", a.idString(), ErrConflict)
		}
	}
	blocks := make([]*alloc.Block, 0, len(allocs))
	undo := func() {
		for _, b := range blocks {
			_ = d.freeBlock(kind, b)
		}
	}
	for _, a := range allocs {
		b, err := d.pools[kind].Alloc(ctx, a.size, a.alignment)
		if err != nil {
			undo()
			return fmt.Errorf("%d bytes of %s memory for %s: %w", a.size, kind, a.idString(), err)
		}
		blocks = append(blocks, b)
	}
	t1 := time.Now()
	ph.setup += t1.Sub(t0)
	for i, a := range allocs {
		dst := device.Location{Device: d.index, Kind: kind, Addr: blocks[i].Addr()}
		if err := d.copy(ctx, dst, d.loc(a), a.size); err != nil {
			undo()
			return fmt.Errorf("copying %s: %w", a.idString(), err)
		}
		ph.bytes += a.size
	}
	ph.copy += time.Since(t1)
	for i, a := range allocs {
		if err := d.freeBlock(a.kind, a.block); err != nil {
			return err // the ledger and its pool disagree: a bug
		}
		d.account(a, -1)
		a.kind, a.block, a.rsv, a.lastUsed = kind, blocks[i], blocks[i].Size(), now.UnixNano()
		a.set(offloaded, kind == device.Pinned)
		d.account(a, 1)
		if kind == device.Pinned {
			d.repayAll(a) // off the device: what it borrowed there is back
		} else {
			d.lend(a, 0, a.size) // a restore, a claim of priority 0
		}
	}
	return nil
}

// release returns the VRAM pool's empty segments to the device.
func (d *Device) release(ctx context.Context) (int64, error) {
	_, bytes, err := d.pools[device.VRAM].Release(ctx)
	return bytes, err
}

// returnCache gives what the VRAM pool caches beyond CacheKeep back to the
// device once it has been cached CacheHold (ReturnCache). Cache the pool
// cannot give back (free pieces of segments in use) is not tried again
// until the cache grows past it.
func (d *Device) returnCache(ctx context.Context, now time.Time) (int64, error) {
	return d.returnCacheAfter(ctx, now, d.cfg.CacheHold)
}

// returnCacheAfter is returnCache with the hold given (0: at once).
func (d *Device) returnCacheAfter(ctx context.Context, now time.Time, hold time.Duration) (int64, error) {
	if !d.cfg.ReturnCache {
		return 0, nil
	}
	pool := d.pools[device.VRAM]
	st := pool.Stats()
	cached := st.ReservedBytes - st.AllocatedBytes
	if cached < d.cacheFloor {
		d.cacheFloor = cached
	}
	if cached <= max(d.cfg.CacheKeep, d.cacheFloor) {
		d.cachedSince = time.Time{}
		return 0, nil
	}
	if d.cachedSince.IsZero() {
		d.cachedSince = now
	}
	if now.Before(d.cachedSince.Add(hold)) {
		return 0, nil
	}
	_, n, err := pool.ReleaseAbove(ctx, d.cfg.CacheKeep)
	st = pool.Stats()
	d.cachedSince, d.cacheFloor = time.Time{}, st.ReservedBytes-st.AllocatedBytes
	return n, err
}

// cacheDeadline is when cached memory is next to go back (zero: none).
func (d *Device) cacheDeadline() time.Time {
	if d.cachedSince.IsZero() {
		return time.Time{}
	}
	return d.cachedSince.Add(d.cfg.CacheHold)
}

// owners maps the VRAM pool's allocated blocks to their allocations.
func (d *Device) owners() map[*alloc.Block]*allocation {
	owners := map[*alloc.Block]*allocation{}
	for _, a := range d.allocs {
		if a.kind == device.VRAM {
			owners[a.block] = a
		}
	}
	return owners
}

// movableIn says which blocks compaction may move: those of allocations
// neither being transferred nor exported.
func movableIn(owners map[*alloc.Block]*allocation) func(*alloc.Block) bool {
	return func(b *alloc.Block) bool {
		a := owners[b]
		return a != nil && a.relocatable()
	}
}
