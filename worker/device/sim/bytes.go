package sim

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/memworker/memworker/worker/device"
)

// Write copies p into memory at at, which must lie, with len(p), inside one
// segment.
func (b *Backend) Write(_ context.Context, at device.Location, p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, off, err := b.locate(at, int64(len(p)))
	if err != nil {
		return err
	}
	seg.write(off, p)
	return nil
}

// Read copies memory at at into p. Bytes never written read as zero.
func (b *Backend) Read(_ context.Context, at device.Location, p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seg, off, err := b.locate(at, int64(len(p)))
	if err != nil {
		return err
	}
	seg.read(off, p)
	return nil
}

// Copy copies n bytes from src to dst; the ranges may overlap. With a copy
// delay set (SetCopyDelay) it sleeps that long first, as a slow link would.
func (b *Backend) Copy(ctx context.Context, dst, src device.Location, n int64) error {
	b.mu.Lock()
	delay := b.copyDelay
	b.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sseg, soff, err := b.locate(src, n)
	if err != nil {
		return err
	}
	dseg, doff, err := b.locate(dst, n)
	if err != nil {
		return err
	}
	buf := make([]byte, min(n, chunkSize))
	// Copy backwards when dst is after src in the same segment, so an
	// overlapping move does not overwrite what it has yet to read.
	backward := sseg == dseg && doff > soff
	for done := int64(0); done < n; {
		m := min(int64(len(buf)), n-done)
		at := done
		if backward {
			at = n - done - m
		}
		if sseg.absent(soff+at, m) {
			dseg.zero(doff+at, m) // never written: nothing to read
		} else {
			sseg.read(soff+at, buf[:m])
			dseg.write(doff+at, buf[:m])
		}
		done += m
	}
	return nil
}

func (b *Backend) locate(at device.Location, n int64) (*segment, int64, error) {
	d, err := b.device(at.Device)
	if err != nil {
		return nil, 0, err
	}
	addr := at.Addr
	segs := d.mem[at.Kind].segments
	i := sort.Search(len(segs), func(i int) bool { return segs[i].addr > addr }) - 1
	if i < 0 || n < 0 || addr+uint64(n) > segs[i].addr+uint64(segs[i].size) {
		return nil, 0, fmt.Errorf("range %#x+%d is not inside one segment: %w", addr, n, device.ErrNotFound)
	}
	if off := int64(addr - segs[i].addr); segs[i].unmappedIn(off, n) {
		return nil, 0, fmt.Errorf("range %#x+%d touches unmapped memory: %w", addr, n, device.ErrNotFound)
	}
	return segs[i], int64(addr - segs[i].addr), nil
}

func (s *segment) write(off int64, p []byte) {
	for len(p) > 0 {
		c, co := off/chunkSize, off%chunkSize
		chunk := s.chunks[c]
		if chunk == nil {
			if allZero(p[:min(int64(len(p)), chunkSize-co)]) {
				n := min(int64(len(p)), chunkSize-co)
				p, off = p[n:], off+n
				continue
			}
			chunk = make([]byte, chunkSize)
			s.chunks[c] = chunk
		}
		n := copy(chunk[co:], p)
		p, off = p[n:], off+int64(n)
	}
}

func (s *segment) read(off int64, p []byte) {
	for len(p) > 0 {
		c, co := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-co)
		if chunk := s.chunks[c]; chunk != nil {
			copy(p[:n], chunk[co:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

// absent reports whether no byte of [off, off+n) was ever written.
func (s *segment) absent(off, n int64) bool {
	for c := off / chunkSize; c <= (off+n-1)/chunkSize; c++ {
		if s.chunks[c] != nil {
			return false
		}
	}
	return true
}

// zero sets [off, off+n) to zero, dropping whole chunks.
func (s *segment) zero(off, n int64) {
	for n > 0 {
		c, co := off/chunkSize, off%chunkSize
		m := min(n, chunkSize-co)
		if chunk := s.chunks[c]; chunk != nil {
			if m == chunkSize {
				delete(s.chunks, c)
			} else {
				clear(chunk[co : co+m])
			}
		}
		off, n = off+m, n-m
	}
}

func allZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}
