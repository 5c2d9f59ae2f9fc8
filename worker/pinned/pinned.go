// Package pinned is the host's pool of page-locked memory, shared by every
// device of the worker. Page-locking memory is slow (on the H100 host the
// driver's cuMemHostAlloc took 4.3 s for 8 GiB) and copies run at the
// speed of the hardware only from and to it, so, as PyTorch's
// CachingHostAllocator does, the pool keeps what it page-locked once and
// hands it out again: an offload or a transfer to the host after the first
// finds its memory ready. It can page-lock memory ahead, at start
// (Config.Prepin), and holds at most Config.Max: past the cap it gives
// back its empty segments before it locks more, and refuses what still
// does not fit.
//
// The devices' ledgers take their pinned segments from it (it is an
// alloc.Source); it cuts them from its own segments with an alloc.Pool.
package pinned

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Backend is what the pool page-locks memory with: a backend's pinned
// segments (device is the one whose context does it; pinned memory is
// usable by every device).
type Backend interface {
	Alloc(ctx context.Context, dev int, kind device.Kind, size int64) (uint64, error)
	Free(ctx context.Context, dev int, kind device.Kind, addr uint64) error
}

// locker is a backend whose pinned segments are page-locked after Alloc
// returns (while they are already in use); the pool waits for what it pins
// ahead, so that memory is ready when the worker says so.
type locker interface {
	WaitLocked(ctx context.Context, addr uint64) error
}

// Config sizes the pool.
type Config struct {
	// Prepin is page-locked at start and kept (0: nothing ahead).
	Prepin int64
	// Max caps the page-locked bytes (0: no cap).
	Max int64
}

// Figures are the pool's state, for replies and metrics.
type Figures struct {
	// PinnedBytes is page-locked host memory held; InUseBytes of it is
	// handed out, CachedBytes is kept for reuse.
	PinnedBytes, InUseBytes, CachedBytes int64
	// PrepinBytes and MaxBytes are the configuration (MaxBytes 0: no cap).
	PrepinBytes, MaxBytes int64
	// Requests counts segments asked for; Hits those served without
	// page-locking more memory.
	Requests, Hits int64
	// LockedBytes counts memory page-locked since start.
	LockedBytes int64
	// AheadBytes is memory Ahead page-locked that is still ready (not
	// handed out), until Behind gives it back.
	AheadBytes int64
}

// Pool is safe for concurrent use.
type Pool struct {
	cfg Config

	mu     sync.Mutex
	src    *source
	pool   *alloc.Pool
	blocks map[uint64]*alloc.Block // handed out, by address
	// ownRequests are the pool's own (at start), not counted.
	ownRequests int64
	// aheadSegs are the segments Ahead page-locked since the last Behind.
	aheadSegs []uint64
}

// New returns a pool over b, with cfg.Prepin page-locked already.
func New(ctx context.Context, b Backend, cfg Config) (*Pool, error) {
	if cfg.Prepin < 0 || cfg.Max < 0 {
		return nil, fmt.Errorf("pinned pool sizes must not be negative")
	}
	if cfg.Max > 0 && cfg.Prepin > cfg.Max {
		return nil, fmt.Errorf("the pinned pool's %s to pin ahead exceed its %s cap", bytesize.Format(cfg.Prepin), bytesize.Format(cfg.Max))
	}
	p := &Pool{cfg: cfg, src: &source{b: b, max: cfg.Max, sizes: map[uint64]int64{}}, blocks: map[uint64]*alloc.Block{}}
	p.pool = alloc.New(p.src)
	if cfg.Prepin > 0 {
		blk, err := p.pool.Alloc(ctx, roundHuge(cfg.Prepin), 0)
		if err != nil {
			return nil, fmt.Errorf("pinning %s ahead: %w", bytesize.Format(cfg.Prepin), err)
		}
		if l, ok := b.(locker); ok {
			if err := l.WaitLocked(ctx, blk.SegmentAddr()); err != nil {
				_ = p.pool.Free(blk)
				_ = p.Close(ctx)
				return nil, fmt.Errorf("pinning %s ahead: %w", bytesize.Format(cfg.Prepin), err)
			}
		}
		_ = p.pool.Free(blk) // cached, for the first to come
		p.ownRequests = 1
	}
	return p, nil
}

// AllocSegment hands out size bytes of page-locked memory, aligned to
// 2 MiB, from what the pool holds when they fit, else newly locked.
func (p *Pool) AllocSegment(ctx context.Context, size int64) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Segments are cut in whole huge pages from 2 MiB-aligned ones, so
	// every block is aligned without asking for padding: a request for
	// alignment would need room for it, and memory freed by a request of
	// the same size would never fit again.
	blk, err := p.pool.Alloc(ctx, roundHuge(size), 0)
	if err != nil {
		return 0, err
	}
	if blk.Addr()%alloc.RoundLarge != 0 {
		_ = p.pool.Free(blk)
		return 0, fmt.Errorf("pinned segment at %#x is not 2 MiB-aligned: the backend broke its word", blk.Addr())
	}
	p.blocks[blk.Addr()] = blk
	return blk.Addr(), nil
}

// FreeSegment takes a segment back; it stays page-locked for the next.
func (p *Pool) FreeSegment(_ context.Context, addr uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	blk, ok := p.blocks[addr]
	if !ok {
		return fmt.Errorf("pinned segment %#x is not the pool's: %w", addr, device.ErrNotFound)
	}
	delete(p.blocks, addr)
	return p.pool.Free(blk)
}

func roundHuge(n int64) int64 {
	return (n + alloc.RoundLarge - 1) / alloc.RoundLarge * alloc.RoundLarge
}

// Figures returns the pool's state.
func (p *Pool) Figures() Figures {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.pool.Stats()
	return Figures{
		PinnedBytes: st.ReservedBytes,
		InUseBytes:  st.AllocatedBytes,
		CachedBytes: st.ReservedBytes - st.AllocatedBytes,
		PrepinBytes: p.cfg.Prepin,
		MaxBytes:    p.cfg.Max,
		Requests:    st.AllocRequests - p.ownRequests,
		Hits:        st.CacheHits,
		LockedBytes: p.src.locked,
		AheadBytes:  p.aheadIdle(),
	}
}

// Ahead makes the pool hold want bytes ready for the next offload,
// page-locking what it lacks (within the cap: what fits) in a segment of
// its own, and waits until that is locked. The segment is cached at once:
// an offload that comes meanwhile takes it, its copies waiting for the
// chunks they touch. Behind gives it back.
func (p *Pool) Ahead(ctx context.Context, want int64) error {
	p.mu.Lock()
	st := p.pool.Stats()
	more := roundHuge(want - (st.ReservedBytes - st.AllocatedBytes))
	if p.cfg.Max > 0 {
		more = min(more, (p.cfg.Max-p.src.held)/alloc.RoundLarge*alloc.RoundLarge)
	}
	if more <= 0 {
		p.mu.Unlock()
		return nil
	}
	seg, err := p.pool.Grow(ctx, more)
	if err == nil {
		p.aheadSegs = append(p.aheadSegs, seg)
	}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pinning %s ahead: %w", bytesize.Format(more), err)
	}
	if l, ok := p.src.b.(locker); ok {
		if err := l.WaitLocked(ctx, seg); err != nil && !errors.Is(err, device.ErrNotFound) {
			return fmt.Errorf("pinning %s ahead: %w", bytesize.Format(more), err)
		}
	}
	return nil
}

// Behind gives back the segments Ahead page-locked that no offload
// holds a part of.
func (p *Pool) Behind(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, seg := range p.aheadSegs {
		if _, err := p.pool.ReleaseSegment(ctx, seg); err != nil {
			errs = append(errs, err)
		}
	}
	p.aheadSegs = nil // those in use stay, cached as any other once freed
	return errors.Join(errs...)
}

// aheadIdle is the memory of the segments pinned ahead that nothing uses.
func (p *Pool) aheadIdle() (n int64) {
	for _, seg := range p.aheadSegs {
		n += p.pool.Idle(seg)
	}
	return n
}

// Close gives back what the pool holds and is not handed out.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _, err := p.pool.Release(ctx)
	return err
}

// source page-locks segments for the pool, within the cap. It is used
// under the pool's lock.
type source struct {
	b      Backend
	max    int64
	sizes  map[uint64]int64 // segments held, by address
	held   int64
	locked int64
}

func (s *source) AllocSegment(ctx context.Context, size int64) (uint64, error) {
	if s.max > 0 && s.held+size > s.max {
		return 0, fmt.Errorf("pinned host memory is at its cap (--pinned-max %s): %s held, %s more asked: %w",
			bytesize.Format(s.max), bytesize.Format(s.held), bytesize.Format(size), device.ErrOutOfMemory)
	}
	addr, err := s.b.Alloc(ctx, 0, device.Pinned, size)
	if err != nil {
		return 0, err
	}
	s.sizes[addr] = size
	s.held += size
	s.locked += size
	return addr, nil
}

func (s *source) FreeSegment(ctx context.Context, addr uint64) error {
	if err := s.b.Free(ctx, 0, device.Pinned, addr); err != nil {
		return err
	}
	s.held -= s.sizes[addr]
	delete(s.sizes, addr)
	return nil
}
