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
// and after.
func (d *Device) Defragment(ctx context.Context) (subjects.DefragmentReply, error) {
	start := time.Now()
	before := fragmentation(d.pools[device.VRAM].Fragmentation())
	c, unmoved, err := d.compact(ctx)
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

// compact compacts the device's VRAM pool: live blocks of sparsely used
// segments move (bytes copied by the backend) and the emptied segments go
// back to the device. Allocation ids stay; their blocks change. Allocations
// being transferred do not move.
func (d *Device) compact(ctx context.Context) (c alloc.Compaction, unmoved int, err error) {
	owners := d.owners()
	for _, a := range owners {
		if !a.relocatable() {
			unmoved++
		}
	}
	movable := movableIn(owners)
	mover := func(ctx context.Context, dst, src uint64, n int64) error {
		return d.backend.Copy(ctx,
			device.Location{Device: d.index, Kind: device.VRAM, Addr: dst},
			device.Location{Device: d.index, Kind: device.VRAM, Addr: src}, n)
	}
	c, err = d.pools[device.VRAM].Compact(ctx, movable, mover)
	// Follow the moves, also when Compact stopped half way.
	for _, mv := range c.Moves {
		a := owners[mv.From]
		a.block = mv.To
		a.ReservedBytes = mv.To.Size()
		owners[mv.To] = a
		delete(owners, mv.From)
	}
	if err != nil {
		return c, unmoved, fmt.Errorf("defragmenting %s: %w", d.id, err)
	}
	return c, unmoved, nil
}

// offload moves a resident VRAM allocation's bytes to pinned host memory of
// the same device and frees its VRAM block (which stays cached in the pool
// until released).
func (d *Device) offload(ctx context.Context, a *allocation, now time.Time) error {
	if a.kind != device.VRAM || !a.relocatable() {
		return fmt.Errorf("allocation %s cannot be offloaded now: %w", a.AllocationID, ErrConflict)
	}
	host, err := d.pools[device.Pinned].Alloc(ctx, a.SizeBytes, a.Alignment)
	if err != nil {
		return fmt.Errorf("pinned host memory for %s: %w", a.AllocationID, err)
	}
	dst := device.Location{Device: d.index, Kind: device.Pinned, Addr: host.Addr()}
	if err := d.backend.Copy(ctx, dst, d.loc(a), a.SizeBytes); err != nil {
		_ = d.pools[device.Pinned].Free(host)
		return fmt.Errorf("offloading %s: %w", a.AllocationID, err)
	}
	if err := d.pools[device.VRAM].Free(a.block); err != nil {
		return err
	}
	a.kind, a.block, a.ReservedBytes, a.Offloaded, a.LastUsedAt = device.Pinned, host, host.Size(), true, now
	return nil
}

// release returns the VRAM pool's empty segments to the device.
func (d *Device) release(ctx context.Context) (int64, error) {
	_, bytes, err := d.pools[device.VRAM].Release(ctx)
	return bytes, err
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
