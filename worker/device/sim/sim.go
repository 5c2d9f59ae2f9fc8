// Package sim is a simulated GPU host: devices with a capacity, segments
// that hold real bytes (stored lazily, so a 16 GiB device costs nothing
// until written), pinned host memory, and fault injection for tests. It is
// the default backend where no GPU is present, and it is deterministic.
package sim

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// The backend's abilities, checked at compile time.
var (
	_ ledger.Backend       = (*Backend)(nil)
	_ ledger.Exporter      = (*Backend)(nil)
	_ ledger.ProcessLister = (*Backend)(nil)
)

// Spec describes one simulated device.
type Spec struct {
	Name       string
	TotalBytes int64
}

// Config describes a simulated host.
type Config struct {
	Devices []Spec
	// PinnedBytes is the page-locked host memory the host can give, shared
	// by all devices (default 8 GiB).
	PinnedBytes int64
	// DisableVMM turns the devices' virtual memory management off (the
	// cuda backend's --vmm=false): VRAM pools then take segments of their
	// own.
	DisableVMM bool
}

// Default returns a host of n devices of totalBytes each.
func Default(n int, totalBytes int64) Config {
	cfg := Config{}
	for i := 0; i < n; i++ {
		cfg.Devices = append(cfg.Devices, Spec{Name: "Simulated GPU", TotalBytes: totalBytes})
	}
	return cfg
}

const (
	chunkSize    = 64 << 10
	segmentAlign = 2 << 20
)

// Backend is a simulated host. It is safe for concurrent use.
type Backend struct {
	mu         sync.Mutex
	devices    []*simDevice
	pinnedCap  int64
	pinnedUsed int64
	copyDelay  time.Duration
	vmm        bool
}

type simDevice struct {
	spec        Spec
	mem         [2]*space     // by device.Kind
	external    int64         // bytes used by "other processes"
	procs       map[int]int64 // simulated processes by pid: their bytes
	unavailable bool
	failAllocs  int
}

// space is one address space: a device's VRAM, or the host's pinned memory.
type space struct {
	next     uint64
	used     int64
	segments []*segment // sorted by addr
}

type segment struct {
	addr   uint64
	size   int64
	chunks map[int64][]byte
	// pieces is set for reserved address space only (vmm.go): the pieces
	// mapped in it, their lengths by offset.
	pieces map[int64]int64
}

// New builds a simulated host.
func New(cfg Config) *Backend {
	if cfg.PinnedBytes == 0 {
		cfg.PinnedBytes = 8 << 30
	}
	b := &Backend{pinnedCap: cfg.PinnedBytes, vmm: !cfg.DisableVMM}
	// Pinned memory is the host's, usable by every device (CUDA's portable
	// page-locked memory): one space, whichever device asks.
	host := &space{next: 0x5500_0000_0000}
	for i, spec := range cfg.Devices {
		d := &simDevice{spec: spec}
		d.mem[device.VRAM] = &space{next: 0x7f00_0000_0000 + uint64(i)<<40}
		d.mem[device.Pinned] = host
		b.devices = append(b.devices, d)
	}
	return b
}

// Name is the backend's name in replies.
func (b *Backend) Name() string { return "sim" }

// Devices lists the simulated devices.
func (b *Backend) Devices(context.Context) ([]device.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	infos := make([]device.Info, len(b.devices))
	for i, d := range b.devices {
		infos[i] = device.Info{
			Index:             i,
			Name:              d.spec.Name,
			UUID:              fmt.Sprintf("SIM-%08x-0000-0000-0000-%012x", i, d.spec.TotalBytes),
			TotalBytes:        d.spec.TotalBytes,
			ComputeCapability: "9.0",
		}
	}
	return infos, nil
}

func (b *Backend) device(dev int) (*simDevice, error) {
	if dev < 0 || dev >= len(b.devices) {
		return nil, fmt.Errorf("device %d: %w", dev, device.ErrNotFound)
	}
	d := b.devices[dev]
	if d.unavailable {
		return nil, fmt.Errorf("device %d: %w", dev, device.ErrUnavailable)
	}
	return d, nil
}

// MemInfo reports device truth: segments held by anyone plus the external
// use set by SetExternalUsage.
func (b *Backend) MemInfo(_ context.Context, dev int) (device.MemInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, err := b.device(dev)
	if err != nil {
		return device.MemInfo{}, err
	}
	free := d.spec.TotalBytes - d.mem[device.VRAM].used - d.others()
	return device.MemInfo{TotalBytes: d.spec.TotalBytes, FreeBytes: max(free, 0)}, nil
}

// Alloc reserves a segment of size bytes of kind memory, aligned to 2 MiB.
func (b *Backend) Alloc(_ context.Context, dev int, kind device.Kind, size int64) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, err := b.device(dev)
	if err != nil {
		return 0, err
	}
	if err := b.take(d, dev, kind, size); err != nil {
		return 0, err
	}
	return d.mem[kind].add(size).addr, nil
}

// take counts size bytes of kind memory of d as used, or says why they
// cannot be.
func (b *Backend) take(d *simDevice, dev int, kind device.Kind, size int64) error {
	if size <= 0 {
		return fmt.Errorf("segment size %d: %w", size, device.ErrOutOfMemory)
	}
	if d.failAllocs > 0 {
		d.failAllocs--
		return fmt.Errorf("device %d: injected allocation failure: %w", dev, device.ErrOutOfMemory)
	}
	sp := d.mem[kind]
	if kind == device.Pinned {
		if b.pinnedUsed+size > b.pinnedCap {
			return fmt.Errorf("pinned host memory: %s of %s used, a %s segment asked: %w", bytesize.Format(b.pinnedUsed), bytesize.Format(b.pinnedCap), bytesize.Format(size), device.ErrOutOfMemory)
		}
		b.pinnedUsed += size
	} else if free := d.spec.TotalBytes - sp.used - d.others(); size > free {
		return fmt.Errorf("%s free, %s asked: %w", bytesize.Format(free), bytesize.Format(size), device.ErrOutOfMemory)
	}
	sp.used += size
	return nil
}

// add places a segment of size bytes at the space's next 2 MiB boundary.
func (sp *space) add(size int64) *segment {
	seg := &segment{addr: sp.next, size: size, chunks: map[int64][]byte{}}
	sp.next += (uint64(size) + segmentAlign - 1) &^ (segmentAlign - 1)
	sp.segments = append(sp.segments, seg) // addresses only grow: stays sorted
	return seg
}

// Free returns the segment at addr.
func (b *Backend) Free(_ context.Context, dev int, kind device.Kind, addr uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dev < 0 || dev >= len(b.devices) {
		return fmt.Errorf("device %d: %w", dev, device.ErrNotFound)
	}
	// A segment of an unavailable device can still be freed: the worker
	// must be able to drop what it held.
	sp := b.devices[dev].mem[kind]
	i, ok := slices.BinarySearchFunc(sp.segments, addr, func(s *segment, a uint64) int {
		return cmp.Compare(s.addr, a)
	})
	if !ok || sp.segments[i].reserved() {
		return fmt.Errorf("segment %#x: %w", addr, device.ErrNotFound)
	}
	sp.used -= sp.segments[i].size
	if kind == device.Pinned {
		b.pinnedUsed -= sp.segments[i].size
	}
	sp.segments = slices.Delete(sp.segments, i, i+1)
	return nil
}

// Segment is a segment as the simulated host holds it: Size is the memory
// it holds (of reserved address space, what is mapped; Reserved is its
// length).
type Segment struct {
	Addr     uint64
	Size     int64
	Reserved int64
}

// Segments lists the segments of kind memory held on dev, by address: the
// truth a worker's ledger is checked against.
func (b *Backend) Segments(dev int, kind device.Kind) []Segment {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Segment
	for _, s := range b.devices[dev].mem[kind].segments {
		if s.reserved() {
			out = append(out, Segment{Addr: s.addr, Size: s.mappedIn(0, s.size), Reserved: s.size})
			continue
		}
		out = append(out, Segment{Addr: s.addr, Size: s.size})
	}
	return out
}
