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

// checksumBlock is the bytes one GPU thread sums: 64 KiB gives an 8 GiB
// buffer 131,072 threads (enough to fill an H100) and the host that many
// CRCs to join, a few milliseconds with one crc32c.Shift.
const checksumBlock = 64 << 10

var blockShift = sync.OnceValue(func() crc32c.Shift { return crc32c.ShiftOf(checksumBlock) })

// kernels is a device's checksum module, loaded when the device opens
// (before its memory baseline: loading takes device memory), with the
// stream and the output buffer its launches share (allocating and freeing
// per launch would cost a driver allocation, and cuMemFree may wait for
// the device, copies included). mu serialises the launches.
type kernels struct {
	crc    cu.Function
	err    error // loading failed: Checksum says so
	mu     sync.Mutex
	stream cu.Stream
	out    cu.DevicePtr
	outCap int64
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
	k.stream, err = cu.MakeStream(cu.NonBlocking)
	k.err = wrap("cuStreamCreate", err)
}

// free releases the stream and buffer; the device's context is current.
func (k *kernels) free() {
	if k.outCap > 0 {
		_ = cu.MemFree(k.out)
		k.outCap = 0
	}
	if k.stream != (cu.Stream{}) {
		_ = k.stream.Destroy()
	}
}

// Checksum returns the CRC-32C of n bytes at loc. Device memory is summed
// on its device (the crc32c_blocks kernel, on a stream of its own, beside
// any copy), pinned host memory on the host's cores.
func (b *Backend) Checksum(ctx context.Context, loc device.Location, n int64) (uint32, error) {
	if n <= 0 {
		return 0, nil
	}
	if loc.Kind == device.Pinned {
		p, err := b.hostPtr(loc.Addr, n)
		if err != nil {
			return 0, err
		}
		return crc32c.Update(0, unsafe.Slice((*byte)(p), n)), nil
	}
	g, err := b.gpu(loc.Device)
	if err != nil {
		return 0, err
	}
	blocks := (n + checksumBlock - 1) / checksumBlock
	sums := make([]uint32, blocks)
	k := &g.kernels
	err = g.here(func() error {
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
		st, out := k.stream, k.out
		p, size, block := cu.DevicePtr(loc.Addr), uint64(n), uint64(checksumBlock)
		const threads = 256
		args := []unsafe.Pointer{unsafe.Pointer(&p), unsafe.Pointer(&size), unsafe.Pointer(&block), unsafe.Pointer(&out)}
		if err := k.crc.Launch(int((blocks+threads-1)/threads), 1, 1, threads, 1, 1, 0, st, args); err != nil {
			return wrap("cuLaunchKernel", err)
		}
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&sums[0]), out, blocks*4, st); err != nil {
			return wrap("cuMemcpyDtoHAsync", err)
		}
		return wrap("cuStreamSynchronize", st.Synchronize())
	})
	if err != nil {
		return 0, fmt.Errorf("checksumming %d bytes on device %d: %w", n, loc.Device, err)
	}
	shift := blockShift()
	var crc uint32
	for i, s := range sums {
		if last := n - int64(i)*checksumBlock; last < checksumBlock {
			return crc32c.Combine(crc, s, last), ctx.Err()
		}
		crc = shift.Apply(crc) ^ s
	}
	return crc, ctx.Err()
}
