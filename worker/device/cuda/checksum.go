//go:build cuda

package cuda

import (
	"context"
	_ "embed"
	"fmt"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/crc32c"
	"github.com/memworker/memworker/worker/device"
)

// crc32cPTX is kernels/crc32c.cu compiled by scripts/ptx.sh.
//
//go:embed kernels/crc32c.ptx
var crc32cPTX string

// checksumBlock is the bytes one GPU thread sums in device memory: 64 KiB
// gives an 8 GiB buffer 131,072 threads (enough to fill an H100) and the
// host that many CRCs to join, a millisecond with a crc32c.ShiftTable.
// Pinned memory is read back a piece at a time (readBack) and summed in
// blocks of 2 KiB: 16,384 threads per piece.
const (
	checksumBlock = 64 << 10
	scratchBlock  = 2 << 10
)

// readBack is the device memory each device reads pinned memory back into
// to sum it, in two halves that take pieces in turn (one is read back while
// the kernel sums the other): the read-back runs in the host-to-device
// direction, which a copy to the host leaves idle, and the GPU sums at
// hundreds of GB/s, while the host's cores would share the host's memory
// bandwidth with the copy itself.
const readBack = 64 << 20

var shifts = map[int64]func() *crc32c.ShiftTable{
	checksumBlock: sync.OnceValue(func() *crc32c.ShiftTable { s := crc32c.ShiftOf(checksumBlock); return s.Table() }),
	scratchBlock:  sync.OnceValue(func() *crc32c.ShiftTable { s := crc32c.ShiftOf(scratchBlock); return s.Table() }),
}

// kernels is a device's checksum module, loaded when the device opens
// (before its memory baseline: loading takes device memory), with the
// streams, events and buffers its launches share (allocating and freeing
// per launch would cost a driver allocation, and cuMemFree may wait for
// the device, copies included). mu serialises the launches.
type kernels struct {
	crc    cu.Function
	err    error // loading failed: Checksum says so
	mu     sync.Mutex
	stream cu.Stream // the kernels'
	out    cu.DevicePtr
	outCap int64

	// Reading pinned memory back: the buffer (0: summed on the host), its
	// stream, and per half the events "read back" and "summed".
	scratch        cu.DevicePtr
	back           cu.Stream
	loaded, summed [2]cu.Event
}

// load loads the module; the device's context is current.
func (k *kernels) load() {
	mod, err := cu.LoadData(crc32cPTX)
	if err != nil {
		k.err = wrap("cuModuleLoadData", err)
		return
	}
	if k.crc, err = mod.Function("crc32c_blocks"); err != nil {
		k.err = wrap("cuModuleGetFunction", err)
		return
	}
	if k.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
		k.err = wrap("cuStreamCreate", err)
		return
	}
	// Without what reading back needs, pinned memory is summed on the host.
	if k.back, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return
	}
	for i := range 2 {
		if k.loaded[i], err = cu.MakeEvent(cu.DisableTiming); err != nil {
			return
		}
		if k.summed[i], err = cu.MakeEvent(cu.DisableTiming); err != nil {
			return
		}
	}
	k.scratch, _ = cu.MemAlloc(readBack)
}

// free releases the streams, events and buffers; the device's context is
// current.
func (k *kernels) free() {
	if k.outCap > 0 {
		_ = cu.MemFree(k.out)
		k.outCap = 0
	}
	if k.scratch != 0 {
		_ = cu.MemFree(k.scratch)
		k.scratch = 0
	}
	for i := range 2 {
		for _, ev := range []*cu.Event{&k.loaded[i], &k.summed[i]} {
			if *ev != (cu.Event{}) {
				_ = cu.DestroyEvent(ev)
			}
		}
	}
	for _, st := range []cu.Stream{k.stream, k.back} {
		if st != (cu.Stream{}) {
			_ = st.Destroy()
		}
	}
}

// Checksum returns the CRC-32C of n bytes at loc, summed on a GPU by the
// crc32c_blocks kernel on a stream of its own, beside any copy: device
// memory where it lies; pinned host memory read back, a piece at a time,
// into the device's read-back buffer (on the host's cores where the device
// has none).
func (b *Backend) Checksum(ctx context.Context, loc device.Location, n int64) (uint32, error) {
	if n <= 0 {
		return 0, nil
	}
	g, err := b.gpu(loc.Device)
	if err != nil {
		return 0, err
	}
	if loc.Kind == device.VRAM {
		crc, err := g.sum(n, checksumBlock, func(k *kernels, out cu.DevicePtr) error {
			return k.launch(cu.DevicePtr(loc.Addr), n, checksumBlock, out)
		})
		if err != nil {
			return 0, fmt.Errorf("checksumming %d bytes on device %d: %w", n, loc.Device, err)
		}
		return crc, ctx.Err()
	}
	p, err := b.hostPtr(loc.Addr, n)
	if err != nil {
		return 0, err
	}
	if g.kernels.scratch == 0 {
		return crc32c.Update(0, unsafe.Slice((*byte)(p), n)), nil
	}
	crc, err := g.sum(n, scratchBlock, func(k *kernels, out cu.DevicePtr) error {
		return k.readBack(p, n, out)
	})
	if err != nil {
		return 0, fmt.Errorf("checksumming %d bytes of pinned memory on device %d: %w", n, loc.Device, err)
	}
	return crc, ctx.Err()
}

// readBack queues the sums of n bytes of pinned memory at p into out: each
// piece is read back into a half of the buffer on the read-back stream
// once the kernel is done with that half, and summed on the kernel stream
// once it has landed.
func (k *kernels) readBack(p unsafe.Pointer, n int64, out cu.DevicePtr) error {
	const piece = readBack / 2
	for i, off := 0, int64(0); off < n; i, off = i+1, off+piece {
		half, m := i%2, min(piece, n-off)
		buf := k.scratch + cu.DevicePtr(half*piece)
		if i >= 2 {
			if err := k.back.Wait(k.summed[half], 0); err != nil {
				return wrap("cuStreamWaitEvent", err)
			}
		}
		if err := cu.MemcpyHtoDAsync(buf, unsafe.Add(p, off), m, k.back); err != nil {
			return wrap("cuMemcpyHtoDAsync", err)
		}
		if err := k.loaded[half].Record(k.back); err != nil {
			return wrap("cuEventRecord", err)
		}
		if err := k.stream.Wait(k.loaded[half], 0); err != nil {
			return wrap("cuStreamWaitEvent", err)
		}
		if err := k.launch(buf, m, scratchBlock, out+cu.DevicePtr(off/scratchBlock*4)); err != nil {
			return err
		}
		if err := k.summed[half].Record(k.stream); err != nil {
			return wrap("cuEventRecord", err)
		}
	}
	return nil
}

// launch queues the kernel over n bytes at p in blocks of block bytes on
// the kernel stream, their CRCs to out.
func (k *kernels) launch(p cu.DevicePtr, n, block int64, out cu.DevicePtr) error {
	const threads = 256
	blocks := (n + block - 1) / block
	size, blk := uint64(n), uint64(block)
	args := []unsafe.Pointer{unsafe.Pointer(&p), unsafe.Pointer(&size), unsafe.Pointer(&blk), unsafe.Pointer(&out)}
	return wrap("cuLaunchKernel", k.crc.Launch(int((blocks+threads-1)/threads), 1, 1, threads, 1, 1, 0, k.stream, args))
}

// sum sums n bytes in blocks of block bytes: queue queues the kernels that
// write the blocks' CRCs to out, on g's thread with the kernels locked; sum
// reads them back and joins them.
func (g *gpu) sum(n, block int64, queue func(k *kernels, out cu.DevicePtr) error) (uint32, error) {
	blocks := (n + block - 1) / block
	sums := make([]uint32, blocks)
	k := &g.kernels
	err := g.here(func() error {
		if k.err != nil {
			return k.err
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if blocks*4 > k.outCap {
			if k.outCap > 0 {
				_ = cu.MemFree(k.out)
				k.outCap = 0
			}
			out, err := cu.MemAlloc(max(blocks*4, 64<<10))
			if err != nil {
				return wrap("cuMemAlloc", err)
			}
			k.out, k.outCap = out, max(blocks*4, 64<<10)
		}
		if err := queue(k, k.out); err != nil {
			_ = k.stream.Synchronize() // nothing of ours still in flight
			if k.back != (cu.Stream{}) {
				_ = k.back.Synchronize()
			}
			return err
		}
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&sums[0]), k.out, blocks*4, k.stream); err != nil {
			return wrap("cuMemcpyDtoHAsync", err)
		}
		return wrap("cuStreamSynchronize", k.stream.Synchronize())
	})
	if err != nil {
		return 0, err
	}
	shift := shifts[block]()
	var crc uint32
	for i, s := range sums {
		if last := n - int64(i)*block; last < block {
			return crc32c.Combine(crc, s, last), nil
		}
		crc = shift.Apply(crc) ^ s
	}
	return crc, nil
}
