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
// next chunks copy, so --verify costs the tail of the last chunk rather
// than a second pass over the whole allocation. Spans must arrive in
// order (CRC-32C is updated sequentially). Its owner sends spans, closes
// spans and receives the result from done.
type verifier struct {
	spans chan span
	done  chan verifyResult
}

type verifyResult struct {
	src, dst uint32
	err      error
}

func (w *Worker) startVerifier(ctx context.Context, src, dst device.Location) *verifier {
	v := &verifier{spans: make(chan span, 4), done: make(chan verifyResult, 1)}
	go func() {
		var r verifyResult
		buf := make([]byte, verifyChunk)
		for sp := range v.spans {
			if r.err != nil {
				continue // drain, so the copier never blocks
			}
			for off := sp.off; off < sp.off+sp.n && r.err == nil; off += verifyChunk {
				p := buf[:min(verifyChunk, sp.off+sp.n-off)]
				if r.src, r.err = w.updateSum(ctx, r.src, src, off, p); r.err == nil {
					r.dst, r.err = w.updateSum(ctx, r.dst, dst, off, p)
				}
			}
		}
		v.done <- r
	}()
	return v
}

// updateSum reads len(p) bytes at off from at into p and adds them to sum.
func (w *Worker) updateSum(ctx context.Context, sum uint32, at device.Location, off int64, p []byte) (uint32, error) {
	at.Addr += uint64(off)
	if err := w.cfg.Backend.Read(ctx, at, p); err != nil {
		return sum, fmt.Errorf("reading for checksum: %w", err)
	}
	return crc32.Update(sum, castagnoli, p), nil
}

// result waits for the verifier and compares the sums; checksum is the
// source's, as the reply shows it.
func (v *verifier) result() (checksum string, err error) {
	close(v.spans)
	r := <-v.done
	if r.err != nil {
		return "", r.err
	}
	if r.src != r.dst {
		return "", fmt.Errorf("verification failed: source checksum %s, copy %s: %w", hexSum(r.src), hexSum(r.dst), errVerify)
	}
	return hexSum(r.src), nil
}

func hexSum(sum uint32) string {
	b := [4]byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)}
	return hex.EncodeToString(b[:])
}
