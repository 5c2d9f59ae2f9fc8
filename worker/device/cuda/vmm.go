//go:build cuda

package cuda

import (
	"context"
	"fmt"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

var _ ledger.Mapper = (*Backend)(nil)

// Device memory through CUDA's virtual memory management: address space
// reserved once (cuMemAddressReserve) and backed by pieces of physical
// memory, multiples of the device's granularity (cuMemCreate, cuMemMap,
// cuMemSetAccess), each of which goes back to the device whole on its own
// (cuMemUnmap). The pools grow in place over it and give free pieces back
// without moving a byte. Legacy IPC handles do not cover this memory:
// exported allocations keep cuMemAlloc segments of their own.

// vmm is a device's virtual memory: its chunk size (0: off or unsupported),
// the devices that may use its memory, and what is reserved and mapped.
type vmm struct {
	gran     int64
	access   []int            // this device first, then its peers
	reserved map[uint64]int64 // reservations by base
	pieces   map[uint64]int64 // mapped pieces by address
}

// Granularity is dev's chunk size for virtual memory: 2 MiB on an H100, 0
// with --vmm=false or where the device has no virtual memory management.
func (b *Backend) Granularity(dev int) int64 {
	g, err := b.gpu(dev)
	if err != nil {
		return 0
	}
	return g.vm.gran
}

// Reserve reserves size bytes of dev's address space, backed by nothing.
func (b *Backend) Reserve(_ context.Context, dev int, size int64) (uint64, error) {
	g, err := b.vmGPU(dev)
	if err != nil {
		return 0, err
	}
	var addr uint64
	if err := g.do(func() (err error) { addr, err = reserve(size, g.vm.gran); return err }); err != nil {
		return 0, err
	}
	g.mu.Lock()
	g.vm.reserved[addr] = size
	g.mu.Unlock()
	return addr, nil
}

// Unreserve gives back a reservation with nothing mapped in it.
func (b *Backend) Unreserve(_ context.Context, dev int, addr uint64, size int64) error {
	g, err := b.vmGPU(dev)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.vm.reserved[addr] != size {
		return fmt.Errorf("no reservation of %d bytes at %#x: %w", size, addr, device.ErrNotFound)
	}
	if n := g.vm.mappedIn(addr, size); n > 0 {
		return fmt.Errorf("reservation %#x has %d bytes mapped: %w", addr, n, device.ErrNotFound)
	}
	if err := g.do(func() error { return unreserve(addr, size) }); err != nil {
		return err
	}
	delete(g.vm.reserved, addr)
	return nil
}

// Map backs whole chunks of a reservation with one piece of dev's memory,
// usable by dev and its peers.
func (b *Backend) Map(ctx context.Context, dev int, addr uint64, size int64) error {
	g, err := b.vmGPU(dev)
	if err != nil {
		return err
	}
	if err := b.fits(ctx, dev, size); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.vm.unmapped(addr, size); err != nil {
		return err
	}
	if err := g.do(func() error { return mapPiece(addr, size, g.index, g.vm.access) }); err != nil {
		return err
	}
	g.vm.pieces[addr] = size
	return nil
}

// Unmap gives a piece Map made, whole, back to the device.
func (b *Backend) Unmap(_ context.Context, dev int, addr uint64, size int64) error {
	g, err := b.vmGPU(dev)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.vm.pieces[addr] != size {
		return fmt.Errorf("%#x+%d is not a piece that was mapped: %w", addr, size, device.ErrNotFound)
	}
	if err := g.do(func() error { return unmapPiece(addr, size) }); err != nil {
		return err
	}
	delete(g.vm.pieces, addr)
	return nil
}

func (b *Backend) vmGPU(dev int) (*gpu, error) {
	g, err := b.gpu(dev)
	if err == nil && g.vm.gran == 0 {
		err = fmt.Errorf("device %d: virtual memory management is off: %w", dev, device.ErrNotFound)
	}
	return g, err
}

// unmapped says why [addr, addr+size) is not whole chunks of one
// reservation with nothing mapped, if it is not.
func (v *vmm) unmapped(addr uint64, size int64) error {
	g := uint64(v.gran)
	if addr%g != 0 || size <= 0 || uint64(size)%g != 0 {
		return fmt.Errorf("range %#x+%d is not whole %d-byte chunks: %w", addr, size, g, device.ErrNotFound)
	}
	inside := false
	for base, n := range v.reserved {
		inside = inside || (addr >= base && addr+uint64(size) <= base+uint64(n))
	}
	if !inside {
		return fmt.Errorf("range %#x+%d is not inside reserved address space: %w", addr, size, device.ErrNotFound)
	}
	for p, n := range v.pieces {
		if p < addr+uint64(size) && addr < p+uint64(n) {
			return fmt.Errorf("range %#x+%d overlaps the piece mapped at %#x+%d: %w", addr, size, p, n, device.ErrNotFound)
		}
	}
	return nil
}

// mappedIn is how many bytes are mapped in [base, base+size).
func (v *vmm) mappedIn(base uint64, size int64) int64 {
	var n int64
	for p, m := range v.pieces {
		if p >= base && p < base+uint64(size) {
			n += m
		}
	}
	return n
}

// release unmaps everything and gives the address space back (Close).
func (v *vmm) release() {
	for p, n := range v.pieces {
		_ = unmapPiece(p, n)
	}
	for base, n := range v.reserved {
		_ = unreserve(base, n)
	}
	clear(v.pieces)
	clear(v.reserved)
}
