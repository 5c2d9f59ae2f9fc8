package ledger

import (
	"context"

	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Backend is what a Device calls of a host's GPU memory: device truth,
// segments of device or pinned host memory, and copies. Errors wrap the
// kinds of package device.
type Backend interface {
	// Name names the backend in replies ("sim", "cuda").
	Name() string
	MemInfo(ctx context.Context, dev int) (device.MemInfo, error)
	Alloc(ctx context.Context, dev int, kind device.Kind, size int64) (addr uint64, err error)
	Free(ctx context.Context, dev int, kind device.Kind, addr uint64) error
	// Copy copies n bytes between any two locations of the host (device to
	// device, peer, host to device and back); overlapping ranges are fine.
	Copy(ctx context.Context, dst, src device.Location, n int64) error
	// Read copies memory at src into p (for checksums).
	Read(ctx context.Context, src device.Location, p []byte) error
}

// ChunkCopier is a backend that pipelines a long copy itself (the cuda
// backend queues the chunks on streams without waiting between them) and
// reports each chunk, in order, as it lands. Moves and transfers use it
// where the backend has it.
type ChunkCopier interface {
	CopyChunks(ctx context.Context, dst, src device.Location, n, chunk int64, landed func(int64)) error
}

// Exporter is a backend that can share a device segment with other
// processes of the host (CUDA IPC). Allocations with export need it.
type Exporter interface {
	Export(ctx context.Context, dev int, base uint64) (handle []byte, err error)
}

// ProcessLister is a backend with telemetry: the processes using a device
// and the memory its driver reserves. Replies show them when it is there.
type ProcessLister interface {
	Processes(ctx context.Context, dev int) (procs []device.Process, driverReserved int64, err error)
}

// Mapper is a backend with virtual memory management (CUDA's
// cuMemAddressReserve, cuMemCreate, cuMemMap): address space reserved once
// and backed by physical chunks where it is used. A device's VRAM pool grows
// in place over it and gives free chunks back without moving a byte.
type Mapper interface {
	// Granularity is dev's chunk size, or 0 where the device or the
	// backend's configuration has no virtual memory management.
	Granularity(dev int) int64
	Reserve(ctx context.Context, dev int, size int64) (addr uint64, err error)
	Unreserve(ctx context.Context, dev int, addr uint64, size int64) error
	Map(ctx context.Context, dev int, addr uint64, size int64) error
	Unmap(ctx context.Context, dev int, addr uint64, size int64) error
}

// vramPool is a device's VRAM pool: growable segments where the backend
// maps virtual memory for the device (each reserving the device's memory
// and an eighth more, as PyTorch's expandable segments do; mapped in pieces
// of at most piece bytes), else segments of their own.
func vramPool(b Backend, dev int, total, piece int64) *alloc.Pool {
	src := source{b: b, dev: dev, kind: device.VRAM}
	if m, ok := b.(Mapper); ok && m.Granularity(dev) > 0 {
		return alloc.NewMapped(mapped{src, m}, total+total/8, piece)
	}
	return alloc.New(src)
}

// mapped adapts a device's virtual memory to alloc.Mapper.
type mapped struct {
	source
	m Mapper
}

func (s mapped) Granularity() int64 { return s.m.Granularity(s.dev) }

func (s mapped) Reserve(ctx context.Context, size int64) (uint64, error) {
	return s.m.Reserve(ctx, s.dev, size)
}

func (s mapped) Unreserve(ctx context.Context, addr uint64, size int64) error {
	return s.m.Unreserve(ctx, s.dev, addr, size)
}

func (s mapped) Map(ctx context.Context, addr uint64, size int64) error {
	return s.m.Map(ctx, s.dev, addr, size)
}

func (s mapped) Unmap(ctx context.Context, addr uint64, size int64) error {
	return s.m.Unmap(ctx, s.dev, addr, size)
}

// source adapts one kind of one device's memory to alloc.Source.
type source struct {
	b    Backend
	dev  int
	kind device.Kind
}

func (s source) AllocSegment(ctx context.Context, size int64) (uint64, error) {
	return s.b.Alloc(ctx, s.dev, s.kind, size)
}

func (s source) FreeSegment(ctx context.Context, addr uint64) error {
	return s.b.Free(ctx, s.dev, s.kind, addr)
}
