// Package alloc is the worker's pooling allocator, modelled on PyTorch's
// CUDA caching allocator: it obtains segments from a Source (a device's
// memory), carves them into blocks, caches freed blocks for reuse, coalesces
// free neighbours, and returns empty segments to the Source only when asked
// (Release) or when the Source runs out of memory.
//
// Sizes round up to 512 bytes. Requests up to 1 MiB come from a small pool
// of 2 MiB segments; larger ones from a large pool whose segments are 20 MiB
// for requests under 10 MiB and otherwise sized to the request (rounded to
// 2 MiB), so large requests get their own segments. Free blocks are kept in a
// B-tree ordered by size and address, so allocation is best fit in O(log n).
//
// A Pool is not safe for concurrent use: its owner serialises calls.
package alloc
