//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gorgonia.org/cu"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/worker/device"
)

// Pinned host memory.
//
// cuMemHostAlloc of 8 GiB took 4.3 s on the H100: it faults, zeroes and
// page-locks every page before it returns, one thread doing all of it. A
// segment here is anonymous memory (mmap, transparent huge pages asked
// for) that several threads fault in and page-lock with cuMemHostRegister
// a pinChunk at a time, in address order, while the segment is already
// handed out: a copy waits only for the chunks it touches, so pinning
// overlaps the copy instead of preceding it. A copy never spans two
// registrations (the driver looks each host pointer up in one).
const (
	pinChunk  = 128 << 20 // bytes page-locked by one cuMemHostRegister
	hostAlign = 2 << 20   // segment alignment: a huge page, as the pools expect
)

// Chunk states.
const (
	chunkPending uint8 = iota
	chunkPinned
	chunkFailed // left pageable: copies still work, through the driver's staging
)

// hostSegment is one pinned host segment.
type hostSegment struct {
	mem  []byte         // the whole mapping, for munmap
	ptr  unsafe.Pointer // the segment's start in mem, hostAlign-aligned
	size int64

	mu     sync.Mutex
	cond   sync.Cond
	chunks []uint8 // per pinChunk: pending, pinned or failed
	err    error   // the first registration failure
	done   chan struct{}
}

// newHostSegment maps size bytes and starts page-locking them on threads
// threads with g's context current; it returns at once.
func newHostSegment(g *gpu, size int64, threads int) (*hostSegment, error) {
	mem, err := syscall.Mmap(-1, 0, int(size+hostAlign), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("mapping %s of host memory: %v: %w", bytesize.Format(size), err, device.ErrOutOfMemory)
	}
	_ = syscall.Madvise(mem, syscall.MADV_HUGEPAGE) // best effort: fewer faults and pages to lock
	base := uintptr(unsafe.Pointer(&mem[0]))
	pad := (hostAlign - base%hostAlign) % hostAlign
	h := &hostSegment{
		mem:    mem,
		ptr:    unsafe.Add(unsafe.Pointer(&mem[0]), pad),
		size:   size,
		chunks: make([]uint8, (size+pinChunk-1)/pinChunk),
		done:   make(chan struct{}),
	}
	h.cond.L = &h.mu
	go h.pin(g, max(threads, 1))
	return h, nil
}

// pin page-locks every chunk, lowest addresses first, and closes done.
func (h *hostSegment) pin(g *gpu, threads int) {
	defer close(h.done)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(threads, len(h.chunks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ctxErr := cu.SetCurrentContext(g.ctx)
			for {
				i := next.Add(1) - 1
				if i >= int64(len(h.chunks)) {
					return
				}
				err := ctxErr
				if err == nil {
					err = h.pinChunk(i)
				}
				h.mu.Lock()
				h.chunks[i] = chunkPinned
				if err != nil {
					h.chunks[i] = chunkFailed
					if h.err == nil {
						h.err = err
					}
				}
				h.cond.Broadcast()
				h.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// pinChunk faults chunk i in (the kernel zeroes its pages here, on this
// thread) and page-locks it. The segment is in use already, so nothing may
// be written to it: MADV_POPULATE_WRITE faults the pages in writable
// without touching them. On the H100 host, 8 GiB on 8 threads: 22.7 GB/s
// with it, 5.6 GB/s leaving the faults to cuMemHostRegister (an atomic OR
// of nothing per page also works but cost ten times as much).
func (h *hostSegment) pinChunk(i int64) error {
	off := i * pinChunk
	n := min(pinChunk, h.size-off)
	_ = unix.Madvise(unsafe.Slice((*byte)(unsafe.Add(h.ptr, off)), n), unix.MADV_POPULATE_WRITE) // best effort: registering faults what is left
	return hostRegister(unsafe.Add(h.ptr, off), n)
}

// piece shortens a copy of n bytes at offset off to the chunk it starts in,
// and waits until that chunk is page-locked (or failed to be).
func (h *hostSegment) piece(off, n int64) int64 {
	i := off / pinChunk
	n = min(n, (i+1)*pinChunk-off)
	h.mu.Lock()
	for h.chunks[i] == chunkPending {
		h.cond.Wait()
	}
	h.mu.Unlock()
	return n
}

// release waits for pinning to end, unlocks the chunks and unmaps the
// segment. A context must be current on the calling thread.
func (h *hostSegment) release() error {
	<-h.done
	var err error
	for i, st := range h.chunks {
		if st != chunkPinned {
			continue
		}
		if uerr := hostUnregister(unsafe.Add(h.ptr, int64(i)*pinChunk)); uerr != nil && err == nil {
			err = uerr
		}
	}
	if merr := syscall.Munmap(h.mem); merr != nil && err == nil {
		err = fmt.Errorf("unmapping host memory: %w", merr)
	}
	return err
}

// WaitLocked blocks until the pinned segment at addr is page-locked
// throughout (or ctx ends), and returns the first registration error: for
// memory pinned ahead, which must be ready when the worker says so.
func (b *Backend) WaitLocked(ctx context.Context, addr uint64) error {
	h, _, err := b.hostSeg(addr, 1)
	if err != nil {
		return err
	}
	select {
	case <-h.done:
		return h.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
