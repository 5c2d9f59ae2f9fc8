//go:build cuda

package cuda

/*
#include <cuda.h>
#include <string.h>

// Host memory the driver allocates, page-locks and maps itself (virtual
// memory management with a host location): numa < 0 asks for any node.
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
// read and write; unmapping the range frees it. On failure nothing stays
// mapped. *step says which call failed.
static CUresult mw_host_vmm_map(CUdeviceptr p, size_t n, int numa, CUdevice dev, int *step) {
	CUmemAllocationProp prop;
	mw_host_prop(&prop, numa);
	CUmemGenericAllocationHandle h;
	*step = 0;
	CUresult r = cuMemCreate(&h, n, &prop, 0);
	if (r != CUDA_SUCCESS) return r;
	*step = 1;
	r = cuMemMap(p, n, 0, h, 0);
	cuMemRelease(h);
	if (r != CUDA_SUCCESS) return r;
	CUmemAccessDesc desc[2];
	memset(desc, 0, sizeof desc);
	desc[0].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	desc[0].location.id = dev;
	desc[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	desc[1].location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
	desc[1].location.id = numa < 0 ? 0 : numa;
	desc[1].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	*step = 2;
	if ((r = cuMemSetAccess(p, n, desc, 2)) != CUDA_SUCCESS) cuMemUnmap(p, n);
	return r;
}

static int mw_attribute(CUdevice dev, int attr) {
	int v = -1;
	if (cuDeviceGetAttribute(&v, (CUdevice_attribute)attr, dev) != CUDA_SUCCESS) return -1;
	return v;
}
*/
import "C"

// Host memory through virtual memory management: a probe of whether the
// driver page-locks host memory it allocates itself faster than it
// registers memory the process mapped, and without stopping the copies
// (BenchmarkHostVMM).

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
	if r := C.mw_host_vmm_map(C.CUdeviceptr(p), C.size_t(n), C.int(numa), C.CUdevice(dev), &step); r != C.CUDA_SUCCESS {
		return driverError([]string{"cuMemCreate (host)", "cuMemMap (host)", "cuMemSetAccess (host)"}[step], int(r))
	}
	return nil
}
