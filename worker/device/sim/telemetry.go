package sim

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/memworker/memworker/worker/device"
)

// ExternalPID is the process id the sim reports for the memory set with
// SetExternalUsage.
const ExternalPID = 1 << 22

// Processes reports what NVML would: this process with the device memory
// it holds, and the "other process" of SetExternalUsage.
func (b *Backend) Processes(_ context.Context, dev int) ([]device.Process, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, err := b.device(dev)
	if err != nil {
		return nil, 0, err
	}
	var procs []device.Process
	if used := d.mem[device.VRAM].used; used > 0 {
		procs = append(procs, device.Process{PID: os.Getpid(), UsedBytes: used})
	}
	if d.external > 0 {
		procs = append(procs, device.Process{PID: ExternalPID, UsedBytes: d.external})
	}
	for _, pid := range slices.Sorted(maps.Keys(d.procs)) {
		procs = append(procs, device.Process{PID: pid, UsedBytes: d.procs[pid]})
	}
	return procs, 0, nil
}

// IPCHandleSize matches CUDA's IPC handle.
const IPCHandleSize = 64

// Export returns a handle naming the segment, shaped like a CUDA IPC
// handle; only this simulator understands it (OpenHandle).
func (b *Backend) Export(_ context.Context, dev int, base uint64) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, _, err := b.locate(device.Location{Device: dev, Kind: device.VRAM, Addr: base}, 1)
	if err != nil {
		return nil, err
	}
	if seg.reserved() { // as cuIpcGetMemHandle refuses cuMemCreate's memory
		return nil, fmt.Errorf("%#x is virtual memory, which IPC handles do not cover: %w", base, device.ErrNotFound)
	}
	h := make([]byte, IPCHandleSize)
	copy(h, "memworker-sim-ipc")
	binary.LittleEndian.PutUint32(h[32:], uint32(dev))
	binary.LittleEndian.PutUint64(h[40:], base)
	return h, nil
}

// OpenHandle turns an exported handle back into the memory it names, as
// another process would open it.
func OpenHandle(h []byte) (device.Location, error) {
	if len(h) != IPCHandleSize || string(h[:17]) != "memworker-sim-ipc" {
		return device.Location{}, fmt.Errorf("not a sim IPC handle: %w", device.ErrNotFound)
	}
	return device.Location{Device: int(binary.LittleEndian.Uint32(h[32:])), Kind: device.VRAM, Addr: binary.LittleEndian.Uint64(h[40:])}, nil
}
