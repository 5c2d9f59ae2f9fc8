// Package device holds what memory backends and their users share: device
// identity, memory information, the two kinds of memory, and the error kinds
// a backend returns. Backends live in sub-packages (sim, cuda); the Backend
// interface is declared by its consumer, package worker.
package device

import "errors"

// Kind is the kind of memory a segment lives in.
type Kind int

const (
	// VRAM is device memory.
	VRAM Kind = iota
	// Pinned is page-locked host memory allocated for the device.
	Pinned
)

func (k Kind) String() string {
	if k == Pinned {
		return "pinned"
	}
	return "vram"
}

// Info identifies a device.
type Info struct {
	Index             int
	Name              string
	UUID              string
	TotalBytes        int64
	ComputeCapability string
}

// Location names memory: a device, a kind of memory and an address in it.
type Location struct {
	Device int
	Kind   Kind
	Addr   uint64
}

// MemInfo is device truth: what the driver says is total and free, with
// every process's use included.
type MemInfo struct {
	TotalBytes int64
	FreeBytes  int64
}

// Process is a process using a device's memory, as the driver sees it.
type Process struct {
	PID       int
	UsedBytes int64
}

// Error kinds returned (wrapped) by backends.
var (
	// ErrOutOfMemory: the device (or host) cannot hold the segment.
	ErrOutOfMemory = errors.New("out of memory")
	// ErrUnavailable: the device is gone or failing.
	ErrUnavailable = errors.New("device unavailable")
	// ErrNotFound: no such device index or segment address.
	ErrNotFound = errors.New("not found")
)
