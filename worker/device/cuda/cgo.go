//go:build cuda

package cuda

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include <string.h>

static CUresult mw_host_alloc(void **p, size_t n) {
	return cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_PORTABLE);
}

static CUresult mw_host_register(void *p, size_t n) {
	return cuMemHostRegister(p, n, CU_MEMHOSTREGISTER_PORTABLE);
}

static CUresult mw_host_unregister(void *p) {
	return cuMemHostUnregister(p);
}

static CUresult mw_ipc_handle(CUdeviceptr p, char *out) {
	CUipcMemHandle h;
	CUresult r = cuIpcGetMemHandle(&h, p);
	if (r == CUDA_SUCCESS) memcpy(out, h.reserved, CU_IPC_HANDLE_SIZE);
	return r;
}

static CUresult mw_can_access_peer(int *ok, CUdevice a, CUdevice b) {
	return cuDeviceCanAccessPeer(ok, a, b);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// IPCHandleSize is the size of a CUDA IPC memory handle.
const IPCHandleSize = C.CU_IPC_HANDLE_SIZE

// HostAlloc is the driver's cuMemHostAlloc (portable), which pinned
// segments no longer use, for benchmarks that compare against it; free
// with cu.MemFreeHost.
func HostAlloc(n int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if r := C.mw_host_alloc(&p, C.size_t(n)); r != C.CUDA_SUCCESS {
		return nil, driverError("cuMemHostAlloc", int(r))
	}
	return p, nil
}

// hostRegister page-locks n bytes of host memory at p for every context
// (cuMemHostRegister is not bound by gorgonia.org/cu).
func hostRegister(p unsafe.Pointer, n int64) error {
	if r := C.mw_host_register(p, C.size_t(n)); r != C.CUDA_SUCCESS {
		return driverError("cuMemHostRegister", int(r))
	}
	return nil
}

func hostUnregister(p unsafe.Pointer) error {
	if r := C.mw_host_unregister(p); r != C.CUDA_SUCCESS {
		return driverError("cuMemHostUnregister", int(r))
	}
	return nil
}

// ipcHandle returns the IPC handle of the device allocation starting at p.
// The device's context must be current.
func ipcHandle(p uint64) ([]byte, error) {
	out := make([]byte, IPCHandleSize)
	if r := C.mw_ipc_handle(C.CUdeviceptr(p), (*C.char)(unsafe.Pointer(&out[0]))); r != C.CUDA_SUCCESS {
		return nil, driverError("cuIpcGetMemHandle", int(r))
	}
	return out, nil
}

func canAccessPeer(a, b int) (bool, error) {
	var ok C.int
	if r := C.mw_can_access_peer(&ok, C.CUdevice(a), C.CUdevice(b)); r != C.CUDA_SUCCESS {
		return false, driverError("cuDeviceCanAccessPeer", int(r))
	}
	return ok != 0, nil
}

// Driver result codes the backend maps to device error kinds.
const (
	resultOutOfMemory = C.CUDA_ERROR_OUT_OF_MEMORY
)

func driverError(call string, code int) error {
	return fmt.Errorf("%s: CUDA error %d: %w", call, code, kindOf(code))
}
