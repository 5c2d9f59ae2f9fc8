package crc32c_test

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/memworker/memworker/worker/crc32c"
)

const piece = 4 << 20

func random(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	return buf
}

func TestUpdateInParallelIsCRC32C(t *testing.T) {
	buf := random(3*piece + 12345)
	for _, n := range []int{0, 1, 100, piece, piece + 1, 2 * piece, len(buf)} {
		for _, seed := range []uint32{0, 0xdeadbeef} {
			want := crc32.Update(seed, crc32c.Table, buf[:n])
			if got := crc32c.Update(seed, buf[:n]); got != want {
				t.Errorf("Update(%#x, %d bytes) = %#x, want %#x", seed, n, got, want)
			}
		}
	}
}

// TestPiecesJoin: the CRC of a buffer from the CRCs of its pieces, by
// Combine and by one Shift for pieces of one length, as a GPU's blocks are
// joined.
func TestPiecesJoin(t *testing.T) {
	buf := random(10*4096 + 777)
	want := crc32.Checksum(buf, crc32c.Table)
	a, b := buf[:777], buf[777:]
	if got := crc32c.Combine(crc32.Checksum(a, crc32c.Table), crc32.Checksum(b, crc32c.Table), int64(len(b))); got != want {
		t.Errorf("Combine = %#x, want %#x", got, want)
	}
	if got := crc32c.Combine(want, 0, 0); got != want {
		t.Errorf("Combine with nothing after = %#x, want %#x", got, want)
	}
	shift := crc32c.ShiftOf(4096)
	for name, apply := range map[string]func(uint32) uint32{"Shift": shift.Apply, "ShiftTable": shift.Table().Apply} {
		var crc uint32
		for off := 0; off < len(buf); off += 4096 {
			block := buf[off:min(off+4096, len(buf))]
			if len(block) == 4096 {
				crc = apply(crc) ^ crc32.Checksum(block, crc32c.Table)
			} else {
				crc = crc32c.Combine(crc, crc32.Checksum(block, crc32c.Table), int64(len(block)))
			}
		}
		if crc != want {
			t.Errorf("joined by %s = %#x, want %#x", name, crc, want)
		}
	}
}

// BenchmarkShift joins one block's CRC, by the operator and by its table.
func BenchmarkShift(b *testing.B) {
	shift := crc32c.ShiftOf(4096)
	table := shift.Table()
	crc := uint32(0x12345678)
	b.Run("Shift", func(b *testing.B) {
		for b.Loop() {
			crc = shift.Apply(crc) ^ 0x9e3779b9
		}
	})
	b.Run("ShiftTable", func(b *testing.B) {
		for b.Loop() {
			crc = table.Apply(crc) ^ 0x9e3779b9
		}
	})
}

// BenchmarkUpdate sums 64 MiB, a transfer's chunk, in parallel pieces.
func BenchmarkUpdate(b *testing.B) {
	buf := random(64 << 20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		crc32c.Update(0, buf)
	}
}

// BenchmarkOneCore is hash/crc32 on one core, for the ratio.
func BenchmarkOneCore(b *testing.B) {
	buf := random(64 << 20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		crc32.Checksum(buf, crc32c.Table)
	}
}
