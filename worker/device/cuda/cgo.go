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

// What memory p points into: fails for pageable memory that no context
// registered (the lookup is the process's, not the current context's).
static CUresult mw_memory_type(void *p, unsigned int *type) {
	return cuPointerGetAttribute(type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)p);
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

// Virtual memory management (gorgonia.org/cu leaves it unbound).

static void mw_chunk_prop(CUmemAllocationProp *prop, CUdevice dev) {
	memset(prop, 0, sizeof *prop);
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop->location.id = dev;
}

// The chunk size of dev's physical memory, 0 where the device has no
// virtual memory management.
static CUresult mw_vmm_granularity(CUdevice dev, size_t *g) {
	int ok = 0;
	CUresult r = cuDeviceGetAttribute(&ok, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
	*g = 0;
	if (r != CUDA_SUCCESS || !ok) return r;
	CUmemAllocationProp prop;
	mw_chunk_prop(&prop, dev);
	return cuMemGetAllocationGranularity(g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
}

static CUresult mw_reserve(CUdeviceptr *p, size_t n, size_t align) {
	return cuMemAddressReserve(p, n, align, 0, 0);
}

static CUresult mw_unreserve(CUdeviceptr p, size_t n) {
	return cuMemAddressFree(p, n);
}

// mw_map backs [p, p+n) with one physical allocation of dev's memory and
// releases the handle at once, so unmapping the range frees the memory.
// The devices in access (dev among them) may read and write the range. On
// failure nothing stays mapped.
static CUresult mw_map(CUdeviceptr p, size_t n, CUdevice dev, const int *access, int naccess) {
	CUmemAllocationProp prop;
	mw_chunk_prop(&prop, dev);
	CUmemGenericAllocationHandle h;
	CUresult r = cuMemCreate(&h, n, &prop, 0);
	if (r != CUDA_SUCCESS) return r;
	r = cuMemMap(p, n, 0, h, 0);
	cuMemRelease(h);
	if (r != CUDA_SUCCESS) return r;
	CUmemAccessDesc desc[16];
	if (naccess > 16) naccess = 16;
	for (int i = 0; i < naccess; i++) {
		memset(&desc[i], 0, sizeof desc[i]);
		desc[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
		desc[i].location.id = access[i];
		desc[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	}
	if ((r = cuMemSetAccess(p, n, desc, naccess)) != CUDA_SUCCESS) cuMemUnmap(p, n);
	return r;
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

// hostLocked says whether p is page-locked host memory, registered or
// allocated pinned by any context (one must be current to ask).
func hostLocked(p unsafe.Pointer) bool {
	var t C.uint
	return C.mw_memory_type(p, &t) == C.CUDA_SUCCESS && t == C.CU_MEMORYTYPE_HOST
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

// vmmGranularity is the chunk size of dev's physical memory for virtual
// memory management, 0 where the device has none.
func vmmGranularity(dev int) (int64, error) {
	var g C.size_t
	if r := C.mw_vmm_granularity(C.CUdevice(dev), &g); r != C.CUDA_SUCCESS {
		return 0, driverError("cuMemGetAllocationGranularity", int(r))
	}
	return int64(g), nil
}

// reserve reserves n bytes of address space aligned to align.
func reserve(n, align int64) (uint64, error) {
	var p C.CUdeviceptr
	if r := C.mw_reserve(&p, C.size_t(n), C.size_t(align)); r != C.CUDA_SUCCESS {
		return 0, driverError("cuMemAddressReserve", int(r))
	}
	return uint64(p), nil
}

func unreserve(p uint64, n int64) error {
	if r := C.mw_unreserve(C.CUdeviceptr(p), C.size_t(n)); r != C.CUDA_SUCCESS {
		return driverError("cuMemAddressFree", int(r))
	}
	return nil
}

// mapPiece backs [p, p+n) with one physical allocation of dev's memory
// that the devices in access may use (cuMemCreate, cuMemMap,
// cuMemSetAccess).
func mapPiece(p uint64, n int64, dev int, access []int) error {
	acc := make([]C.int, len(access))
	for i, a := range access {
		acc[i] = C.int(a)
	}
	if r := C.mw_map(C.CUdeviceptr(p), C.size_t(n), C.CUdevice(dev), &acc[0], C.int(len(acc))); r != C.CUDA_SUCCESS {
		return driverError("cuMemMap", int(r))
	}
	return nil
}

// unmapPiece unmaps what mapPiece mapped at p, freeing it.
func unmapPiece(p uint64, n int64) error {
	if r := C.cuMemUnmap(C.CUdeviceptr(p), C.size_t(n)); r != C.CUDA_SUCCESS {
		return driverError("cuMemUnmap", int(r))
	}
	return nil
}

// Driver result codes the backend maps to device error kinds.
const (
	resultOutOfMemory = C.CUDA_ERROR_OUT_OF_MEMORY
)

func driverError(call string, code int) error {
	return fmt.Errorf("%s: CUDA error %d: %w", call, code, kindOf(code))
}
