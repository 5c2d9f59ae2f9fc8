//go:build cuda

package cuda

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

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

// Config tunes the backend.
type Config struct {
	// MemoryLimit, when positive, gives the worker a slice of each device:
	// MemInfo reports the limit as the total and counts as used only what
	// was allocated (by anyone) after the backend opened the device. It
	// lets a worker manage part of a GPU it shares, and lets tests reach
	// pressure levels quickly on an 80 GB card.
	MemoryLimit int64
	// Devices limits the backend to the first n devices (0: all).
	Devices int
	// PinThreads is how many threads page-lock new pinned segments, all
	// segments together (0: DefaultPinThreads).
	PinThreads int
	// CopyStreams is how many streams a pipelined copy queues its pieces
	// on (0: DefaultCopyStreams).
	CopyStreams int
	// PinContexts, when above 0, gives each device that many contexts of
	// its own for the pinning threads to register with (chunk i of a
	// segment with context i%n; registrations are portable, so the copies
	// on the primary context use them). Registering with the context that
	// copies stops its copies while it runs; another context does not
	// (docs/h100/round3/besidecopy). Measured, it does not pay: registering
	// runs near 30 GB/s a process whatever the contexts, each context
	// takes about 524 MiB of device memory (counted in the baseline), and
	// the cold pipeline ran slower with 2 to 8 of them
	// (docs/h100/round3/contexts). 0, the default: the primary context.
	PinContexts int
	// DisableVMM keeps device memory in cuMemAlloc segments (--vmm=false)
	// instead of virtual memory (vmm.go) where the device supports it.
	DisableVMM bool
}

// DefaultPinThreads page-lock new pinned memory: faulting pages in is
// what costs, and it scales with threads until memory bandwidth runs out.
var DefaultPinThreads = min(8, runtime.NumCPU())

// Backend drives the host's NVIDIA GPUs. It is safe for concurrent use.
type Backend struct {
	cfg     Config
	devices []*gpu
	nvml    *telemetry

	closeOnce sync.Once
	mu        sync.Mutex
	host      map[uint64]*hostSegment // pinned host memory by address
	pin       *pinner                 // page-locks it (host.go)
}

// gpu is one device: its primary context, current on the one OS thread that
// runs its work.
type gpu struct {
	index int
	dev   cu.Device
	ctx   cu.CUContext
	info  device.Info
	work  chan func()

	baseline int64 // bytes in use when opened, for MemoryLimit

	kernels kernels     // the module of checksum.go
	streams []cu.Stream // pipelined copies' streams (stream.go)

	mu       sync.Mutex
	segments map[uint64]int64 // device memory held, by address
	vm       vmm              // virtual memory (vmm.go)
	extra    []cu.DevicePtr   // SetExternalUsage's stand-in for another process

	pinCtxs []cu.CUContext // the pinning threads' contexts (Config.PinContexts)
}

// New opens the host's devices. It fails when there is none.
func New(cfg Config) (*Backend, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("counting CUDA devices: %w", err)
	}
	if n == 0 {
		return nil, fmt.Errorf("no CUDA device: %w", device.ErrNotFound)
	}
	if cfg.Devices > 0 && cfg.Devices < n {
		n = cfg.Devices
	}
	if cfg.PinThreads <= 0 {
		cfg.PinThreads = DefaultPinThreads
	}
	if cfg.CopyStreams <= 0 {
		cfg.CopyStreams = DefaultCopyStreams
	}
	b := &Backend{cfg: cfg, host: map[uint64]*hostSegment{}, pin: &pinner{threads: cfg.PinThreads}, nvml: openTelemetry()}
	for i := 0; i < n; i++ {
		g, err := open(i, cfg)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.devices = append(b.devices, g)
	}
	b.enablePeers()
	for _, g := range b.devices {
		free, total, err := g.memInfo()
		if err != nil {
			b.Close()
			return nil, err
		}
		g.baseline = total - free
	}
	return b, nil
}

func (g *gpu) memInfo() (free, total int64, err error) {
	err = g.here(func() (err error) {
		free, total, err = cu.MemInfo()
		return err
	})
	return free, total, wrap("cuMemGetInfo", err)
}

// makePinContexts makes n contexts of the device for the pinning threads
// (none: they use the primary one), on the device's thread.
func (g *gpu) makePinContexts(n int) error {
	if n <= 0 {
		g.pinCtxs = []cu.CUContext{g.ctx}
		return nil
	}
	for range n {
		c, err := g.dev.MakeContext(cu.SchedAuto)
		if err != nil {
			return wrap("cuCtxCreate", err)
		}
		g.pinCtxs = append(g.pinCtxs, c)
		if _, err := cu.PopCurrentCtx(); err != nil { // cuCtxCreate pushed it
			return wrap("cuCtxPopCurrent", err)
		}
	}
	return nil
}

// destroyPinContexts destroys the pinning contexts made for the device.
// The list itself stays (segments share it; destroying zeroes only the
// copy here), so a segment made by an Alloc racing Close, which callers
// must not do, finds contexts that are gone rather than none.
func (g *gpu) destroyPinContexts() {
	for _, c := range g.pinCtxs {
		if c != g.ctx {
			_ = c.Destroy()
		}
	}
}

func open(i int, cfg Config) (*gpu, error) {
	d, err := cu.GetDevice(i)
	if err != nil {
		return nil, fmt.Errorf("device %d: %w", i, err)
	}
	g := &gpu{index: i, dev: d, work: make(chan func()), segments: map[uint64]int64{}}
	g.vm = vmm{access: []int{i}, reserved: map[uint64]int64{}, pieces: map[uint64]int64{}}
	if !cfg.DisableVMM {
		if g.vm.gran, err = vmmGranularity(i); err != nil {
			return nil, fmt.Errorf("device %d: %w", i, err)
		}
	}
	g.info.Index = i
	if g.info.Name, err = d.Name(); err != nil {
		return nil, err
	}
	if id, err := d.UUID(); err == nil {
		g.info.UUID = "GPU-" + id.String()
	}
	if g.info.TotalBytes, err = d.TotalMem(); err != nil {
		return nil, err
	}
	major, _ := d.Attribute(cu.ComputeCapabilityMajor)
	minor, _ := d.Attribute(cu.ComputeCapabilityMinor)
	g.info.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	if g.ctx, err = d.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("device %d: primary context: %w", i, err)
	}
	ready := make(chan error)
	go g.run(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	// What takes device memory once, before the baseline is read: the
	// copy streams and the checksum module.
	err = g.do(func() error {
		g.kernels.load()
		for range cfg.CopyStreams {
			st, err := cu.MakeStream(cu.NonBlocking)
			if err != nil {
				return wrap("cuStreamCreate", err)
			}
			g.streams = append(g.streams, st)
		}
		return g.makePinContexts(cfg.PinContexts)
	})
	if err != nil {
		_ = g.do(func() error { g.destroyPinContexts(); return nil })
		close(g.work)
		_ = d.ReleasePrimaryCtx()
		return nil, fmt.Errorf("device %d: %w", i, err)
	}
	return g, nil
}

// run is the device's thread: it makes the context current once and runs
// the device's work until Close.
func (g *gpu) run(ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(g.ctx); err != nil {
		ready <- fmt.Errorf("device %d: making its context current: %w", g.index, err)
		return
	}
	close(ready)
	for f := range g.work {
		f()
	}
}

// here runs f on the calling goroutine's thread with the device's context
// made current, for short driver calls that every status and every
// mutation make: handing them to the device's thread (a channel round trip
// and two goroutine wake-ups) costs more than such a call itself
// (BenchmarkTelemetry; figures in docs/performance.md).
func (g *gpu) here(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(g.ctx); err != nil {
		return err
	}
	return f()
}

// do runs f on the device's thread and returns its error.
func (g *gpu) do(f func() error) error {
	done := make(chan error, 1)
	g.work <- func() { done <- f() }
	return <-done
}

// enablePeers lets every pair of devices that can reach each other copy
// directly (NVLink or PCIe peer to peer); without it peer copies are staged
// through the host at a fraction of the speed.
func (b *Backend) enablePeers() {
	for _, a := range b.devices {
		for _, p := range b.devices {
			if a == p {
				continue
			}
			if ok, err := canAccessPeer(a.index, p.index); err != nil || !ok {
				continue
			}
			if a.do(func() error { return p.ctx.EnablePeerAccess(0) }) == nil {
				p.vm.access = append(p.vm.access, a.index) // a may use p's virtual memory too
			}
		}
	}
}

// Close frees everything the backend still holds, stops the device
// threads and releases the contexts.
func (b *Backend) Close() {
	b.closeOnce.Do(b.close)
}

func (b *Backend) close() {
	b.mu.Lock()
	for addr, h := range b.host {
		_ = h.release(b.pin)
		delete(b.host, addr)
	}
	b.mu.Unlock()
	for _, g := range b.devices {
		_ = g.do(func() error {
			g.mu.Lock()
			defer g.mu.Unlock()
			for addr := range g.segments {
				_ = cu.MemFree(cu.DevicePtr(addr))
				delete(g.segments, addr)
			}
			g.vm.release()
			for _, p := range g.extra {
				_ = cu.MemFree(p)
			}
			g.kernels.free()
			for i := range g.streams {
				_ = g.streams[i].Destroy()
			}
			g.destroyPinContexts()
			g.extra = nil
			return nil
		})
		close(g.work)
		_ = g.dev.ReleasePrimaryCtx()
	}
	b.devices = nil
	b.nvml.close()
}

// Name is the backend's name in replies.
func (b *Backend) Name() string { return "cuda" }

func (b *Backend) gpu(i int) (*gpu, error) {
	if i < 0 || i >= len(b.devices) {
		return nil, fmt.Errorf("device %d: %w", i, device.ErrNotFound)
	}
	return b.devices[i], nil
}

// Devices lists the devices with their identity; with a memory limit, the
// limit is their total.
func (b *Backend) Devices(context.Context) ([]device.Info, error) {
	out := make([]device.Info, len(b.devices))
	for i, g := range b.devices {
		out[i] = g.info
		if b.cfg.MemoryLimit > 0 {
			out[i].TotalBytes = min(out[i].TotalBytes, b.cfg.MemoryLimit)
		}
	}
	return out, nil
}

// MemInfo is the driver's cuMemGetInfo, capped by the memory limit.
func (b *Backend) MemInfo(_ context.Context, dev int) (device.MemInfo, error) {
	g, err := b.gpu(dev)
	if err != nil {
		return device.MemInfo{}, err
	}
	free, total, err := g.memInfo()
	if err != nil {
		return device.MemInfo{}, err
	}
	if limit := b.cfg.MemoryLimit; limit > 0 && limit < total {
		used := max(total-free-g.baseline, 0)
		total, free = limit, max(limit-used, 0)
	}
	return device.MemInfo{TotalBytes: total, FreeBytes: free}, nil
}

// Alloc reserves a segment: cuMemAlloc for VRAM; for pinned host memory,
// mapped memory that is page-locked (portable) while it is used (host.go).
func (b *Backend) Alloc(ctx context.Context, dev int, kind device.Kind, size int64) (uint64, error) {
	g, err := b.gpu(dev)
	if err != nil {
		return 0, err
	}
	if size <= 0 {
		return 0, fmt.Errorf("segment size %d: %w", size, device.ErrOutOfMemory)
	}
	if kind == device.Pinned {
		h, err := newHostSegment(g, size, b.pin)
		if err != nil {
			return 0, err
		}
		addr := uint64(uintptr(h.ptr))
		b.mu.Lock()
		b.host[addr] = h
		b.mu.Unlock()
		return addr, nil
	}
	if err := b.fits(ctx, dev, size); err != nil {
		return 0, err
	}
	var p cu.DevicePtr
	if err := g.do(func() (err error) { p, err = cu.MemAlloc(size); return err }); err != nil {
		return 0, wrap("cuMemAlloc", err)
	}
	g.mu.Lock()
	g.segments[uint64(p)] = size
	g.mu.Unlock()
	return uint64(p), nil
}

// fits says why size more bytes of dev's memory would pass the memory
// limit, if they would.
func (b *Backend) fits(ctx context.Context, dev int, size int64) error {
	if b.cfg.MemoryLimit <= 0 {
		return nil
	}
	mi, err := b.MemInfo(ctx, dev)
	if err != nil {
		return err
	}
	if size > mi.FreeBytes {
		return fmt.Errorf("%s of its %s limit free, %s asked: %w", bytesize.Format(mi.FreeBytes), bytesize.Format(mi.TotalBytes), bytesize.Format(size), device.ErrOutOfMemory)
	}
	return nil
}

// Free returns a segment.
func (b *Backend) Free(_ context.Context, dev int, kind device.Kind, addr uint64) error {
	g, err := b.gpu(dev)
	if err != nil {
		return err
	}
	if kind == device.Pinned {
		b.mu.Lock()
		h, ok := b.host[addr]
		delete(b.host, addr)
		b.mu.Unlock()
		if !ok {
			return fmt.Errorf("pinned segment %#x: %w", addr, device.ErrNotFound)
		}
		return h.release(b.pin)
	}
	g.mu.Lock()
	_, ok := g.segments[addr]
	delete(g.segments, addr)
	g.mu.Unlock()
	if !ok {
		return fmt.Errorf("device segment %#x: %w", addr, device.ErrNotFound)
	}
	return g.do(func() error { return wrap("cuMemFree", cu.MemFree(cu.DevicePtr(addr))) })
}

// hostSeg finds the pinned segment holding the range addr+n and the
// range's offset in it.
func (b *Backend) hostSeg(addr uint64, n int64) (*hostSegment, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for base, h := range b.host {
		if addr >= base && addr+uint64(n) <= base+uint64(h.size) {
			return h, int64(addr - base), nil
		}
	}
	return nil, 0, fmt.Errorf("range %#x+%d is not inside a pinned segment: %w", addr, n, device.ErrNotFound)
}

// hostPtr turns a pinned address range into a pointer, checking it lies in
// one pinned segment.
func (b *Backend) hostPtr(addr uint64, n int64) (unsafe.Pointer, error) {
	h, off, err := b.hostSeg(addr, n)
	if err != nil {
		return nil, err
	}
	return unsafe.Add(h.ptr, off), nil
}

// piece shortens a copy of n bytes at loc so that its pinned side stays in
// one page-locked chunk, and waits until that chunk is locked.
func (b *Backend) piece(loc device.Location, n int64) (int64, error) {
	if loc.Kind != device.Pinned || n <= 0 {
		return n, nil
	}
	h, off, err := b.hostSeg(loc.Addr, n)
	if err != nil {
		return 0, err
	}
	return h.piece(off, n), nil
}

// Copy copies n bytes between any two locations, and returns once they are
// copied: on one device (cuMemcpyDtoD), between devices (cuMemcpyPeer,
// direct where peer access is on), host to device and back
// (cuMemcpyHtoD/DtoH from pinned memory), or host to host. It is CopyChunks
// in pieces of copyChunk.
func (b *Backend) Copy(ctx context.Context, dst, src device.Location, n int64) error {
	return b.CopyChunks(ctx, dst, src, n, copyChunk, func(int64) {})
}

// next is the piece of a copy of n bytes from src to dst that starts at
// off: where it goes, where from, and how long it is (at most chunk, and
// on neither pinned side spanning two page-locked chunks, once they are
// locked). A cancelled context stops the copy here, between pieces.
func (b *Backend) next(ctx context.Context, dst, src device.Location, off, n, chunk int64) (d, s device.Location, m int64, err error) {
	if err := ctx.Err(); err != nil {
		return d, s, 0, fmt.Errorf("copy stopped after %d of %d bytes: %w", off, n, err)
	}
	d, s = dst, src
	d.Addr += uint64(off)
	s.Addr += uint64(off)
	if m, err = b.piece(d, min(chunk, n-off)); err != nil {
		return d, s, 0, err
	}
	m, err = b.piece(s, m)
	return d, s, m, err
}

// copyChunk bounds one driver copy, so a cancelled context stops a long
// copy between chunks (a driver copy cannot be interrupted).
const copyChunk = 256 << 20

// copy copies n bytes at once: host to host on this thread, otherwise
// with one driver call queued as a pipelined piece is (copyAsync), on the
// legacy default stream, and waited for: some driver copies return before
// they finish (device to device), and a copy that returned must be done
// (compaction frees the source right after). The copy streams are
// non-blocking, so the wait covers this copy only.
func (b *Backend) copy(dst, src device.Location, n int64) error {
	if n <= 0 {
		return nil
	}
	g, err := b.driver(dst, src)
	if err != nil {
		return err
	}
	if g == nil {
		s, err := b.hostPtr(src.Addr, n)
		if err != nil {
			return err
		}
		d, err := b.hostPtr(dst.Addr, n)
		if err != nil {
			return err
		}
		copy(unsafe.Slice((*byte)(d), n), unsafe.Slice((*byte)(s), n))
		return nil
	}
	return g.here(func() error {
		if err := b.copyAsync(dst, src, n, cu.NoStream); err != nil {
			return err
		}
		return wrap("cuStreamSynchronize", cu.NoStream.Synchronize())
	})
}

// Read copies memory at src into p.
func (b *Backend) Read(_ context.Context, src device.Location, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if src.Kind == device.Pinned {
		h, err := b.hostPtr(src.Addr, int64(len(p)))
		if err != nil {
			return err
		}
		copy(p, unsafe.Slice((*byte)(h), len(p)))
		return nil
	}
	g, err := b.gpu(src.Device)
	if err != nil {
		return err
	}
	return g.do(func() error {
		return wrap("cuMemcpyDtoH", cu.MemcpyDtoH(unsafe.Pointer(&p[0]), cu.DevicePtr(src.Addr), int64(len(p))))
	})
}

// Write copies p into memory at dst.
func (b *Backend) Write(_ context.Context, dst device.Location, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if dst.Kind == device.Pinned {
		h, err := b.hostPtr(dst.Addr, int64(len(p)))
		if err != nil {
			return err
		}
		copy(unsafe.Slice((*byte)(h), len(p)), p)
		return nil
	}
	g, err := b.gpu(dst.Device)
	if err != nil {
		return err
	}
	return g.do(func() error {
		return wrap("cuMemcpyHtoD", cu.MemcpyHtoD(cu.DevicePtr(dst.Addr), unsafe.Pointer(&p[0]), int64(len(p))))
	})
}

// Export returns the CUDA IPC handle of the device segment at base, which
// another process on the host opens with cuIpcOpenMemHandle (CuPy:
// cupy.cuda.runtime.ipcOpenMemHandle).
func (b *Backend) Export(_ context.Context, dev int, base uint64) ([]byte, error) {
	g, err := b.gpu(dev)
	if err != nil {
		return nil, err
	}
	var h []byte
	err = g.do(func() (err error) { h, err = ipcHandle(base); return err })
	return h, err
}

// Segment is device memory the backend holds: Size is the memory (of
// reserved address space, what is mapped; Reserved is its length).
type Segment struct {
	Addr     uint64
	Size     int64
	Reserved int64
}

// Segments lists the device memory held on dev (pinned memory is listed
// with kind Pinned, by address): the truth a worker's ledger is checked
// against.
func (b *Backend) Segments(dev int, kind device.Kind) []Segment {
	var out []Segment
	if kind == device.Pinned {
		b.mu.Lock()
		for a, h := range b.host {
			out = append(out, Segment{Addr: a, Size: h.size})
		}
		b.mu.Unlock()
		return out
	}
	g := b.devices[dev]
	g.mu.Lock()
	defer g.mu.Unlock()
	for a, s := range g.segments {
		out = append(out, Segment{Addr: a, Size: s})
	}
	for a, n := range g.vm.reserved {
		out = append(out, Segment{Addr: a, Size: g.vm.mappedIn(a, n), Reserved: n})
	}
	return out
}

// SetExternalUsage makes dev hold bytes of device memory outside any pool,
// as another process would: real memory, visible in MemInfo.
func (b *Backend) SetExternalUsage(dev int, bytes int64) error {
	g, err := b.gpu(dev)
	if err != nil {
		return err
	}
	return g.do(func() error {
		for _, p := range g.extra {
			if err := cu.MemFree(p); err != nil {
				return err
			}
		}
		g.extra = nil
		if bytes <= 0 {
			return nil
		}
		p, err := cu.MemAlloc(bytes)
		if err != nil {
			return wrap("cuMemAlloc", err)
		}
		g.extra = append(g.extra, p)
		return nil
	})
}

// wrap adds the call and the device error kind to a gorgonia/cu error.
func wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, cu.OutOfMemory) {
		return fmt.Errorf("%s: %v: %w", call, err, device.ErrOutOfMemory)
	}
	return fmt.Errorf("%s: %v: %w", call, err, device.ErrUnavailable)
}

func kindOf(code int) error {
	if code == resultOutOfMemory {
		return device.ErrOutOfMemory
	}
	return device.ErrUnavailable
}
