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

// mw_create_map backs [p, p+n) with one physical allocation as prop says
// and releases the handle at once, so unmapping the range frees the
// memory; desc says who may read and write it. On failure nothing stays
// mapped; *step says which call failed (create, map, access).
static CUresult mw_create_map(CUdeviceptr p, size_t n, const CUmemAllocationProp *prop, const CUmemAccessDesc *desc, int ndesc, int *step) {
	CUmemGenericAllocationHandle h;
	*step = 0;
	CUresult r = cuMemCreate(&h, n, prop, 0);
	if (r != CUDA_SUCCESS) return r;
	*step = 1;
	r = cuMemMap(p, n, 0, h, 0);
	cuMemRelease(h);
	if (r != CUDA_SUCCESS) return r;
	*step = 2;
	if ((r = cuMemSetAccess(p, n, desc, ndesc)) != CUDA_SUCCESS) cuMemUnmap(p, n);
	return r;
}

static void mw_access(CUmemAccessDesc *d, CUmemLocationType type, int id) {
	memset(d, 0, sizeof *d);
	d->location.type = type;
	d->location.id = id;
	d->flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
}

// mw_map backs [p, p+n) with dev's memory, which the devices in access
// (dev among them) may read and write.
static CUresult mw_map(CUdeviceptr p, size_t n, CUdevice dev, const int *access, int naccess, int *step) {
	CUmemAllocationProp prop;
	mw_chunk_prop(&prop, dev);
	CUmemAccessDesc desc[16];
	if (naccess > 16) naccess = 16;
	for (int i = 0; i < naccess; i++) mw_access(&desc[i], CU_MEM_LOCATION_TYPE_DEVICE, access[i]);
	return mw_create_map(p, n, &prop, desc, naccess, step);
}

// Host memory the driver allocates and page-locks itself (a probe:
// BenchmarkHostVMM): numa < 0 asks for any node.
static void mw_host_prop(CUmemAllocationProp *prop, int numa) {
	memset(prop, 0, sizeof *prop);
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->location.type = numa < 0 ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_HOST_NUMA;
	prop->location.id = numa < 0 ? 0 : numa;
}

static CUresult mw_host_vmm_granularity(int numa, size_t *g) {
	CUmemAllocationProp prop;
	mw_host_prop(&prop, numa);
	return cuMemGetAllocationGranularity(g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
}

// mw_host_vmm_map backs [p, p+n) with host memory that dev and the CPU may
// read and write.
static CUresult mw_host_vmm_map(CUdeviceptr p, size_t n, int numa, CUdevice dev, int *step) {
	CUmemAllocationProp prop;
	mw_host_prop(&prop, numa);
	CUmemAccessDesc desc[2];
	mw_access(&desc[0], CU_MEM_LOCATION_TYPE_DEVICE, dev);
	mw_access(&desc[1], CU_MEM_LOCATION_TYPE_HOST_NUMA, numa < 0 ? 0 : numa);
	return mw_create_map(p, n, &prop, desc, 2, step);
}

static int mw_attribute(CUdevice dev, int attr) {
	int v = -1;
	if (cuDeviceGetAttribute(&v, (CUdevice_attribute)attr, dev) != CUDA_SUCCESS) return -1;
	return v;
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
	var step C.int
	return mapped(C.mw_map(C.CUdeviceptr(p), C.size_t(n), C.CUdevice(dev), &acc[0], C.int(len(acc)), &step), step)
}

// mapped is the error of a mw_create_map that failed at step.
func mapped(r C.CUresult, step C.int) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return driverError([]string{"cuMemCreate", "cuMemMap", "cuMemSetAccess"}[step], int(r))
}

// Host memory through virtual memory management, a probe
// (BenchmarkHostVMM, docs/h100/round3/hostvmm): the driver makes it at
// 5.8 GB/s whatever the threads, without stopping the copies.

// hostVMMSupport reads whether dev supports host-located virtual memory
// (CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) and on a
// NUMA node (..._HOST_NUMA_...): 1, 0, or -1 where the driver does not say.
func hostVMMSupport(dev int) (host, numa int) {
	return int(C.mw_attribute(C.CUdevice(dev), C.CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)),
		int(C.mw_attribute(C.CUdevice(dev), C.CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED))
}

// hostVMMGranularity is the chunk size of host memory on numa (< 0: any).
func hostVMMGranularity(numa int) (int64, error) {
	var g C.size_t
	if r := C.mw_host_vmm_granularity(C.int(numa), &g); r != C.CUDA_SUCCESS {
		return 0, driverError("cuMemGetAllocationGranularity (host)", int(r))
	}
	return int64(g), nil
}

// hostVMMMap backs [p, p+n) of reserved address space with host memory
// on numa (< 0: any) that dev and the CPU may use; unmapPiece frees it.
func hostVMMMap(p uint64, n int64, numa, dev int) error {
	var step C.int
	return mapped(C.mw_host_vmm_map(C.CUdeviceptr(p), C.size_t(n), C.int(numa), C.CUdevice(dev), &step), step)
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
