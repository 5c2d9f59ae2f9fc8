package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/memworker/memworker/worker/crc32c"
	"github.com/memworker/memworker/worker/device"
)

var errVerify = errors.New("checksum mismatch")

// span is a copied range of a transfer, offsets from the allocation's start.
type span struct{ off, n int64 }

// verifier checksums a transfer's source and copy chunk by chunk while the
// next chunks copy, so verify costs the tail of the last chunk rather than
// a second pass over the whole allocation. Two summers, one per side, read
// and sum at once (on a GPU the copy side is often host memory, read
// without the device). Spans must arrive in order (CRC-32C is updated
// sequentially). Its owner sends spans, then calls result, which waits
// for both summers.
type verifier struct {
	src, dst *summer
}

// summer keeps the running CRC-32C of one side.
type summer struct {
	spans chan span
	done  chan summed
}

type summed struct {
	sum uint32
	err error
}

func (m *Manager) startVerifier(ctx context.Context, src, dst device.Location, n int64) *verifier {
	return &verifier{src: m.startSummer(ctx, src, n, true), dst: m.startSummer(ctx, dst, n, false)}
}

// Checksummer is a backend that sums memory itself: the cuda backend sums
// device memory where it lies on its GPU, and pinned memory read back into
// the GPU over the direction a copy leaves idle, so verifying takes neither
// the copy's bandwidth nor the host's.
type Checksummer interface {
	Checksum(ctx context.Context, at device.Location, n int64) (uint32, error)
}

func (m *Manager) startSummer(ctx context.Context, at device.Location, n int64, source bool) *summer {
	s := &summer{spans: make(chan span, 4), done: make(chan summed, 1)}
	cs, inPlace := m.cfg.Backend.(Checksummer)
	if inPlace && at.Kind == device.VRAM {
		// A GPU sums best all at once, on every core it has: the source
		// right away (it does not change while lent), the copy once it
		// has landed.
		go func() {
			if !source {
				for range s.spans {
				}
			}
			var r summed
			if r.sum, r.err = cs.Checksum(ctx, at, n); r.err != nil {
				r.err = fmt.Errorf("checksumming: %w", r.err)
			}
			if source {
				for range s.spans {
				}
			}
			s.done <- r
		}()
		return s
	}
	go func() {
		var r summed
		var buf []byte
		for sp := range s.spans {
			if r.err != nil {
				continue // only drain, so the copier never blocks
			}
			if inPlace {
				sp = gather(sp, s.spans)
				loc := at
				loc.Addr += uint64(sp.off)
				var c uint32
				if c, r.err = cs.Checksum(ctx, loc, sp.n); r.err != nil {
					r.err = fmt.Errorf("checksumming: %w", r.err)
				}
				r.sum = crc32c.Combine(r.sum, c, sp.n)
				continue
			}
			if buf == nil {
				buf = make([]byte, m.cfg.Chunk)
			}
			for off := sp.off; off < sp.off+sp.n && r.err == nil; off += m.cfg.Chunk {
				r.sum, r.err = m.updateSum(ctx, r.sum, at, off, buf[:min(m.cfg.Chunk, sp.off+sp.n-off)])
			}
		}
		s.done <- r
	}()
	return s
}

// gather joins to sp the spans that have landed meanwhile (they follow it),
// so a summer that fell behind sums them in one call: a GPU pipelines a
// long read-back, where a call per span would wait between spans.
func gather(sp span, more <-chan span) span {
	for {
		select {
		case next, ok := <-more:
			if !ok {
				return sp
			}
			sp.n += next.n // spans arrive in order, each after the last
		default:
			return sp
		}
	}
}

// add hands a copied span to both summers.
func (v *verifier) add(sp span) {
	v.src.spans <- sp
	v.dst.spans <- sp
}

// updateSum reads len(p) bytes at off from at into p and adds them to sum.
func (m *Manager) updateSum(ctx context.Context, sum uint32, at device.Location, off int64, p []byte) (uint32, error) {
	at.Addr += uint64(off)
	if err := m.cfg.Backend.Read(ctx, at, p); err != nil {
		return sum, fmt.Errorf("reading for checksum: %w", err)
	}
	return crc32c.Update(sum, p), nil
}

// result waits for both summers and compares the sums; checksum is the
// source's, as the reply shows it.
func (v *verifier) result() (checksum string, err error) {
	close(v.src.spans)
	close(v.dst.spans)
	src, dst := <-v.src.done, <-v.dst.done
	if err := errors.Join(src.err, dst.err); err != nil {
		return "", err
	}
	if src.sum != dst.sum {
		return "", fmt.Errorf("verification failed: source checksum %s, copy %s: %w", hexSum(src.sum), hexSum(dst.sum), errVerify)
	}
	return hexSum(src.sum), nil
}

func hexSum(sum uint32) string {
	b := [4]byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)}
	return hex.EncodeToString(b[:])
}
