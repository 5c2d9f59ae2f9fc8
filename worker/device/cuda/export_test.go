//go:build cuda

package cuda

import "unsafe"

// HostRegister is hostRegister, for the page-locking probe.
var HostRegister = hostRegister

// HostUnregister is hostUnregister, for the page-locking probe.
var HostUnregister = hostUnregister

// SetPinChunk changes the bytes one cuMemHostRegister locks, for segments
// made from now on, and returns the old size.
func SetPinChunk(n int64) int64 {
	old := pinChunk
	pinChunk = n
	return old
}

// SegmentLocked says whether the driver has every chunk of the pinned
// segment at addr registered as page-locked host memory (by any context),
// asked with device 0's primary context current.
func (b *Backend) SegmentLocked(addr uint64) (bool, error) {
	h, _, err := b.hostSeg(addr, 1)
	if err != nil {
		return false, err
	}
	locked := true
	err = b.devices[0].do(func() error {
		for off := int64(0); off < h.size; off += h.chunk {
			locked = locked && hostLocked(unsafe.Add(h.ptr, off))
		}
		return nil
	})
	return locked, err
}

// Host memory through virtual memory management, for BenchmarkHostVMM.
var (
	HostVMMSupport     = hostVMMSupport
	HostVMMGranularity = hostVMMGranularity
	HostVMMMap         = hostVMMMap
	UnmapPiece         = unmapPiece
	Reserve            = reserve
	Unreserve          = unreserve
)
