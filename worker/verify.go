package worker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/memworker/memworker/worker/device"
)

var errVerify = errors.New("checksum mismatch")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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

func (w *Worker) startVerifier(ctx context.Context, src, dst device.Location) *verifier {
	return &verifier{src: w.startSummer(ctx, src), dst: w.startSummer(ctx, dst)}
}

func (w *Worker) startSummer(ctx context.Context, at device.Location) *summer {
	s := &summer{spans: make(chan span, 4), done: make(chan summed, 1)}
	go func() {
		var r summed
		buf := make([]byte, verifyChunk)
		for sp := range s.spans {
			for off := sp.off; off < sp.off+sp.n && r.err == nil; off += verifyChunk {
				r.sum, r.err = w.updateSum(ctx, r.sum, at, off, buf[:min(verifyChunk, sp.off+sp.n-off)])
			}
			// After an error the loop only drains, so the copier never blocks.
		}
		s.done <- r
	}()
	return s
}

// add hands a copied span to both summers.
func (v *verifier) add(sp span) {
	v.src.spans <- sp
	v.dst.spans <- sp
}

// updateSum reads len(p) bytes at off from at into p and adds them to sum.
func (w *Worker) updateSum(ctx context.Context, sum uint32, at device.Location, off int64, p []byte) (uint32, error) {
	at.Addr += uint64(off)
	if err := w.cfg.Backend.Read(ctx, at, p); err != nil {
		return sum, fmt.Errorf("reading for checksum: %w", err)
	}
	return crcUpdate(sum, p), nil
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
