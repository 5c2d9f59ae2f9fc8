package pinned

import "syscall"

// HostMemory is the host's physical memory in bytes (0 when unknown).
func HostMemory() int64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}
