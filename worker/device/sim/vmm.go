package sim

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

var _ ledger.Mapper = (*Backend)(nil)

// Granularity is the simulated devices' physical chunk, an H100's.
const Granularity = 2 << 20

// Granularity is dev's chunk size for virtual memory, 0 with it disabled.
func (b *Backend) Granularity(int) int64 {
	if !b.vmm {
		return 0
	}
	return Granularity
}

// Reserve reserves size bytes of dev's address space, backed by nothing:
// reading or copying there fails until chunks are mapped (a GPU faults).
func (b *Backend) Reserve(_ context.Context, dev int, size int64) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, err := b.device(dev)
	if err != nil {
		return 0, err
	}
	if !b.vmm || size <= 0 || size%Granularity != 0 {
		return 0, fmt.Errorf("reserving %d bytes (virtual memory on: %v): %w", size, b.vmm, device.ErrNotFound)
	}
	sp := d.mem[device.VRAM]
	seg := sp.add(size) // address space only: nothing counted as used
	seg.pieces = map[int64]int64{}
	return seg.addr, nil
}

// Unreserve gives back reserved address space with nothing mapped in it.
func (b *Backend) Unreserve(_ context.Context, dev int, addr uint64, size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, err := b.reservation(dev, addr, size)
	if err != nil {
		return err
	}
	if n := seg.mappedIn(0, seg.size); seg.addr != addr || seg.size != size || n > 0 {
		return fmt.Errorf("unreserving %#x+%d: the reservation is %#x+%d with %d bytes mapped: %w", addr, size, seg.addr, seg.size, n, device.ErrNotFound)
	}
	sp := b.devices[dev].mem[device.VRAM]
	sp.segments = slices.DeleteFunc(sp.segments, func(s *segment) bool { return s == seg })
	return nil
}

// Map backs whole chunks of a reservation with one piece of device memory,
// counted as used as cuMemCreate's would be. Mapping a chunk twice is
// refused.
func (b *Backend) Map(_ context.Context, dev int, addr uint64, size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, err := b.reservation(dev, addr, size)
	if err != nil {
		return err
	}
	off := int64(addr - seg.addr)
	if n := seg.mappedIn(off, size); n > 0 {
		return fmt.Errorf("%d bytes of %#x+%d are mapped already: %w", n, addr, size, device.ErrNotFound)
	}
	d, err := b.device(dev)
	if err != nil {
		return err
	}
	if err := b.take(d, dev, device.VRAM, size); err != nil {
		return err
	}
	seg.pieces[off] = size
	return nil
}

// Unmap gives a piece Map made, whole, back to the device (cuMemUnmap
// cannot unmap part of one); what it held is gone.
func (b *Backend) Unmap(_ context.Context, dev int, addr uint64, size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, err := b.reservation(dev, addr, size)
	if err != nil {
		return err
	}
	off := int64(addr - seg.addr)
	if seg.pieces[off] != size {
		return fmt.Errorf("%#x+%d is not a piece that was mapped: %w", addr, size, device.ErrNotFound)
	}
	delete(seg.pieces, off)
	seg.zero(int64(addr-seg.addr), size)
	b.devices[dev].mem[device.VRAM].used -= size
	return nil
}

// reservation finds the reservation holding the whole chunks addr+size.
func (b *Backend) reservation(dev int, addr uint64, size int64) (*segment, error) {
	if dev < 0 || dev >= len(b.devices) {
		return nil, fmt.Errorf("device %d: %w", dev, device.ErrNotFound)
	}
	if addr%Granularity != 0 || size <= 0 || size%Granularity != 0 {
		return nil, fmt.Errorf("range %#x+%d is not whole %d-byte chunks: %w", addr, size, Granularity, device.ErrNotFound)
	}
	segs := b.devices[dev].mem[device.VRAM].segments
	i, _ := slices.BinarySearchFunc(segs, addr+1, func(s *segment, a uint64) int { return cmp.Compare(s.addr, a) })
	if i--; i < 0 || !segs[i].reserved() || addr+uint64(size) > segs[i].addr+uint64(segs[i].size) {
		return nil, fmt.Errorf("range %#x+%d is not inside reserved address space: %w", addr, size, device.ErrNotFound)
	}
	return segs[i], nil
}

// reserved reports whether s is reserved address space (not a cuMemAlloc
// segment).
func (s *segment) reserved() bool { return s.pieces != nil }

// mappedIn is how many bytes of [off, off+n) of s are mapped.
func (s *segment) mappedIn(off, n int64) int64 {
	var in int64
	for at, size := range s.pieces {
		in += max(0, min(off+n, at+size)-max(off, at))
	}
	return in
}

// unmappedIn reports a range of s (at least a byte) that is reserved
// address space and not all mapped.
func (s *segment) unmappedIn(off, n int64) bool {
	n = max(n, 1)
	return s.reserved() && s.mappedIn(off, n) < n
}
