/*
 * Wrapper that lets gorgonia.org/cu v0.9.6 compile against CUDA 13's cuda.h.
 *
 * CUDA 13 maps five driver entry points that gorgonia/cu calls to newer
 * versions with other signatures (see ../../../../../shared/GPU.md). Put this
 * folder first on the include path: it includes the real header, then, for
 * CUDA 13 and later, undoes those five mappings and declares the older
 * prototypes, which the driver still exports. Our own code calls only
 * cuCtxCreate of the five (Config.PinContexts), through gorgonia's
 * Device.MakeContext, which the v2 entry point serves.
 */
#ifndef MEMWORKER_CUDA13_WRAPPER_H
#define MEMWORKER_CUDA13_WRAPPER_H

#include_next <cuda.h>

#if CUDA_VERSION >= 13000
#undef cuCtxCreate
#undef cuMemAdvise
#undef cuMemPrefetchAsync
#undef cuGraphAddDependencies
#undef cuGraphGetEdges
#define cuCtxCreate cuCtxCreate_v2

#ifdef __cplusplus
extern "C" {
#endif
CUresult CUDAAPI cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev);
CUresult CUDAAPI cuMemAdvise(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUdevice device);
CUresult CUDAAPI cuMemPrefetchAsync(CUdeviceptr devPtr, size_t count, CUdevice dstDevice, CUstream hStream);
CUresult CUDAAPI cuGraphAddDependencies(CUgraph hGraph, const CUgraphNode *from, const CUgraphNode *to, size_t numDependencies);
CUresult CUDAAPI cuGraphGetEdges(CUgraph hGraph, CUgraphNode *from, CUgraphNode *to, size_t *numEdges);
#ifdef __cplusplus
}
#endif
#endif /* CUDA_VERSION >= 13000 */

#endif /* MEMWORKER_CUDA13_WRAPPER_H */
