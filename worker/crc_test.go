package worker

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestCRCUpdateInParallelIsCRC32C(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 3*crcPiece+12345)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for _, n := range []int{0, 1, 100, crcPiece, crcPiece + 1, 2 * crcPiece, len(buf)} {
		for _, seed := range []uint32{0, 0xdeadbeef} {
			want := crc32.Update(seed, castagnoli, buf[:n])
			if got := crcUpdate(seed, buf[:n]); got != want {
				t.Errorf("crcUpdate(%#x, %d bytes) = %#x, want %#x", seed, n, got, want)
			}
		}
	}
	a, b := buf[:777], buf[777:5000]
	if got, want := crcCombine(crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli), int64(len(b))), crc32.Checksum(buf[:5000], castagnoli); got != want {
		t.Errorf("crcCombine = %#x, want %#x", got, want)
	}
}
