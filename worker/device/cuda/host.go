//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"runtime"
	"sync"
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
const hostAlign = 2 << 20 // segment alignment: a huge page, as the pools expect

// pinChunk is the bytes page-locked by one cuMemHostRegister, for
// segments made from now on (a variable for the probes that try others).
// On a fresh H100 host, a cold 8 GiB copy into a new segment on 8 threads
// ran at 27.7 GB/s with 64 MiB, 25.8 with 128, 23.8 with 32 and 23.5 with
// 256 (docs/h100/round3/coldparts).
var pinChunk int64 = 64 << 20

// Chunk states.
const (
	chunkPending uint8 = iota
	chunkPinned
	chunkFailed // left pageable: copies still work, through the driver's staging
)

// hostSegment is one pinned host segment.
type hostSegment struct {
	mem   []byte         // the whole mapping, for munmap
	ptr   unsafe.Pointer // the segment's start in mem, hostAlign-aligned
	size  int64
	chunk int64          // bytes per registration: pinChunk when made
	ctxs  []cu.CUContext // chunk i is registered with ctxs[i%len(ctxs)]

	mu     sync.Mutex
	cond   sync.Cond
	chunks []uint8 // per chunk: pending, pinned or failed
	err    error   // the first registration failure
	done   chan struct{}

	// Guarded by the pinner's lock: the next chunk to take, and how many
	// taken chunks are still being pinned.
	next, busy int
}

// newHostSegment maps size bytes and queues them to be page-locked with
// g's pinning contexts; it returns at once.
func newHostSegment(g *gpu, size int64, p *pinner) (*hostSegment, error) {
	mem, err := syscall.Mmap(-1, 0, int(size+hostAlign), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("mapping %s of host memory: %v: %w", bytesize.Format(size), err, device.ErrOutOfMemory)
	}
	_ = syscall.Madvise(mem, syscall.MADV_HUGEPAGE) // best effort: fewer faults and pages to lock
	chunk := pinChunk
	base := uintptr(unsafe.Pointer(&mem[0]))
	pad := (hostAlign - base%hostAlign) % hostAlign
	h := &hostSegment{
		mem:    mem,
		ptr:    unsafe.Add(unsafe.Pointer(&mem[0]), pad),
		size:   size,
		chunk:  chunk,
		ctxs:   g.pinCtxs,
		chunks: make([]uint8, (size+chunk-1)/chunk),
		done:   make(chan struct{}),
	}
	h.cond.L = &h.mu
	p.add(h)
	return h, nil
}

// pinner page-locks the chunks of new pinned segments for the whole host
// on at most threads threads, the oldest segment's lowest chunks first: an
// offload of ten allocations copies them one after the other, and each
// copy waits for its own segment's chunks only, not for ten segments
// pinned at once on ten times the threads (which page-lock no faster).
//
// Pinning starts when a segment is mapped. Mapping the next segments then
// waits behind the registrations in flight (for the process's mmap lock,
// by our reading: an offload's set-up of ten segments took 26-32 ms, and
// nothing when no thread pinned meanwhile), but that time is not lost: starting the threads only at the first copy made the set-up
// 0 and the copy as much longer (cold offloads of 10 GiB 0.42-0.46x raw
// either way, alternating on one H100), and queueing each segment only
// at its own first copy paused the threads at every segment (0.40x).
// docs/h100/round3/colddrift.
type pinner struct {
	threads int

	mu      sync.Mutex
	queue   []*hostSegment // segments with chunks not taken yet, oldest first
	running int
}

// add queues a segment's chunks and starts threads to pin them, up to the
// limit.
func (p *pinner) add(h *hostSegment) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, h)
	for ; p.running < p.threads; p.running++ {
		go p.work()
	}
}

// take hands out the next chunk to pin, or reports that none is left (and
// the calling thread ends).
func (p *pinner) take() (*hostSegment, int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.queue) > 0 {
		h := p.queue[0]
		if h.next < len(h.chunks) {
			h.next++
			h.busy++
			return h, h.next - 1, true
		}
		p.queue = p.queue[1:]
	}
	p.running--
	return nil, 0, false
}

// work is one pinning thread: it pins chunks until none is left, chunk i
// of a segment with the device's pinning context i%n (so the chunks pinned
// at once spread over the contexts), and leaves no context current on
// its thread when it ends.
func (p *pinner) work() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tc threadContext
	defer tc.leave()
	for {
		h, i, ok := p.take()
		if !ok {
			return
		}
		err := tc.use(h.ctxOf(i))
		if err == nil {
			err = h.pinChunk(int64(i))
		}
		p.finish(h, i, err)
	}
}

// threadContext is the context current on a locked thread that switches
// between contexts.
type threadContext struct{ current cu.CUContext }

// use makes c current, unless it is already.
func (t *threadContext) use(c cu.CUContext) error {
	if c == t.current {
		return nil
	}
	if err := cu.SetCurrentContext(c); err != nil {
		return err
	}
	t.current = c
	return nil
}

// leave leaves no context current on the thread.
func (t *threadContext) leave() {
	if t.current != (cu.CUContext{}) {
		_ = cu.SetCurrentContext(cu.CUContext{})
	}
}

// ctxOf is the context that registers chunk i of h.
func (h *hostSegment) ctxOf(i int) cu.CUContext { return h.ctxs[i%len(h.ctxs)] }

// finish records chunk i of h pinned (or failed), wakes the copies waiting
// for it, and closes done after the segment's last chunk.
func (p *pinner) finish(h *hostSegment, i int, err error) {
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
	p.mu.Lock()
	h.busy--
	last := h.next == len(h.chunks) && h.busy == 0
	p.mu.Unlock()
	if last {
		close(h.done)
	}
}

// cancel stops pinning h (it is being freed): the chunks not taken yet stay
// pageable, and done closes once the taken ones are pinned.
func (p *pinner) cancel(h *hostSegment) {
	p.mu.Lock()
	left := h.next < len(h.chunks)
	h.next = len(h.chunks)
	last := left && h.busy == 0
	p.mu.Unlock()
	if last {
		close(h.done)
	}
}

// pinChunk faults chunk i in (the kernel zeroes its pages here, on the
// pinning thread) and page-locks it. The segment is in use already, so nothing may
// be written to it: MADV_POPULATE_WRITE faults the pages in writable
// without touching them. On the H100 host, 8 GiB on 8 threads: 22.7 GB/s
// with it, 5.6 GB/s leaving the faults to cuMemHostRegister. Faulting
// alone scales past 50 GB/s on 16 threads, but cuMemHostRegister does not
// scale at all (about 42 GB/s on any number of threads) and more threads
// only contend: an atomic touch per page, a mapping per chunk, 4 KiB pages
// and 12 or 16 threads were all no faster (docs/h100/round3/coldpin). And
// it hardly runs while the device copies: beside a loop of synchronous
// 256 MiB copies it registered 2.0 GB/s against 45.8 idle, while faulting
// in was not slowed at all (docs/h100/round3/coldparts).
func (h *hostSegment) pinChunk(i int64) error {
	off := i * h.chunk
	n := min(h.chunk, h.size-off)
	_ = unix.Madvise(unsafe.Slice((*byte)(unsafe.Add(h.ptr, off)), n), unix.MADV_POPULATE_WRITE) // best effort: registering faults what is left
	return hostRegister(unsafe.Add(h.ptr, off), n)
}

// piece shortens a copy of n bytes at offset off to the chunk it starts in,
// and waits until that chunk is page-locked (or failed to be).
func (h *hostSegment) piece(off, n int64) int64 {
	i := off / h.chunk
	n = min(n, (i+1)*h.chunk-off)
	h.mu.Lock()
	for h.chunks[i] == chunkPending {
		h.cond.Wait()
	}
	h.mu.Unlock()
	return n
}

// release stops pinning, waits for the chunks being pinned, unlocks the
// pinned ones and unmaps the segment. Unlocking runs on a locked thread
// of its own, each chunk with the context that registered it, so no
// caller's context changes and the device's thread is not held. (With
// pinning contexts of their own, unregistering may then spare the primary
// context's copies as registering does: BenchmarkRegisterContexts'
// unregister step asks.)
func (h *hostSegment) release(p *pinner) error {
	p.cancel(h)
	<-h.done
	errc := make(chan error, 1)
	go func() { errc <- h.unregister() }()
	err := <-errc
	if merr := syscall.Munmap(h.mem); merr != nil && err == nil {
		err = fmt.Errorf("unmapping host memory: %w", merr)
	}
	return err
}

// unregister unlocks h's pinned chunks, chunk i with h.ctxs[i%n] current
// (registrations are portable: where that context cannot be made current,
// the one current unregisters it), and leaves no context current.
func (h *hostSegment) unregister() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tc threadContext
	defer tc.leave()
	var err error
	for i, st := range h.chunks {
		if st != chunkPinned {
			continue
		}
		_ = tc.use(h.ctxOf(i))
		if uerr := hostUnregister(unsafe.Add(h.ptr, int64(i)*h.chunk)); uerr != nil && err == nil {
			err = uerr
		}
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
