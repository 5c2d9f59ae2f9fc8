//go:build !linux

package pinned

// HostMemory is the host's physical memory in bytes (0 when unknown).
func HostMemory() int64 { return 0 }
