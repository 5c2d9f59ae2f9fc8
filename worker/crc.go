package worker

import (
	"hash/crc32"
	"runtime"
	"sync"
)

// crcPiece is how much of a buffer one goroutine sums; at most 8, and no
// more than GOMAXPROCS, sum at once. One core sums CRC-32C at about 8 GB/s
// (the H100 host's profile, docs/h100/round2/p15), below a GPU's copy rate.
const (
	crcPiece       = 8 << 20
	crcMaxParallel = 8
)

// crcUpdate returns crc32.Update(crc, castagnoli, p), summing pieces of p
// on several goroutines and joining them with crcCombine.
func crcUpdate(crc uint32, p []byte) uint32 {
	if len(p) <= crcPiece {
		return crc32.Update(crc, castagnoli, p)
	}
	n := (len(p) + crcPiece - 1) / crcPiece
	sums := make([]uint32, n)
	sem := make(chan struct{}, min(crcMaxParallel, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			piece := p[i*crcPiece : min((i+1)*crcPiece, len(p))]
			sums[i] = crc32.Checksum(piece, castagnoli)
		})
	}
	wg.Wait()
	for i, s := range sums {
		crc = crcCombine(crc, s, int64(min(crcPiece, len(p)-i*crcPiece)))
	}
	return crc
}

// crcCombine returns the CRC-32C of A followed by B from crcA, crcB and
// the length of B: zlib's crc32_combine, for the reflected Castagnoli
// polynomial, by squaring the operator "append one zero bit" in GF(2).
func crcCombine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	var even, odd [32]uint32
	odd[0] = 0x82f63b78 // the reflected Castagnoli polynomial
	row := uint32(1)
	for i := 1; i < 32; i++ {
		odd[i] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	for {
		gf2Square(&even, &odd) // first pass: one zero byte
		if lenB&1 != 0 {
			crcA = gf2Times(&even, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
		gf2Square(&odd, &even)
		if lenB&1 != 0 {
			crcA = gf2Times(&odd, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
	}
	return crcA ^ crcB
}

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for n := range 32 {
		square[n] = gf2Times(mat, mat[n])
	}
}
