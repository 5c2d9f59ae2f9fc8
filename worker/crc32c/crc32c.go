// Package crc32c sums CRC-32C (Castagnoli), the checksum of verified
// transfers, at the speed of the copies it checks: on several cores at
// once, and joined from pieces summed elsewhere (a GPU's blocks) with the
// GF(2) algebra of zlib's crc32_combine.
package crc32c

import (
	"hash/crc32"
	"runtime"
	"sync"
)

// Table is the Castagnoli table (hash/crc32 uses the CPU's instruction
// with it).
var Table = crc32.MakeTable(crc32.Castagnoli)

// piece is how much of a buffer one goroutine sums; at most maxParallel,
// and no more than GOMAXPROCS, sum at once. One core sums CRC-32C at about
// 8 GB/s (the H100 host's profile, docs/h100/round2/p15), below a GPU's
// copy rate.
const (
	piece       = 4 << 20
	maxParallel = 16
)

// Update returns crc32.Update(crc, Table, p), summing pieces of p on
// several goroutines and joining them with Combine.
func Update(crc uint32, p []byte) uint32 {
	if len(p) <= piece {
		return crc32.Update(crc, Table, p)
	}
	n := (len(p) + piece - 1) / piece
	sums := make([]uint32, n)
	sem := make(chan struct{}, min(maxParallel, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sums[i] = crc32.Checksum(p[i*piece:min((i+1)*piece, len(p))], Table)
		})
	}
	wg.Wait()
	for i, s := range sums {
		crc = Combine(crc, s, int64(min(piece, len(p)-i*piece)))
	}
	return crc
}

// Combine returns the CRC-32C of A followed by B from crcA, crcB and the
// length of B: zlib's crc32_combine, for the reflected Castagnoli
// polynomial.
func Combine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	s := ShiftOf(lenB)
	return s.Apply(crcA) ^ crcB
}

// Shift is the operator "append n zero bytes" on a CRC register: with it,
// the CRC of A followed by any B of n bytes is Shift(n).Apply(crcA) ^
// crcB. Building it costs about as much as one Combine; applying it is 32
// steps, for joining many pieces of one length.
type Shift [32]uint32

// ShiftOf builds the operator for n zero bytes, by squaring the operator
// "append one zero bit" in GF(2).
func ShiftOf(n int64) Shift {
	var even, odd [32]uint32
	odd[0] = 0x82f63b78 // the reflected Castagnoli polynomial
	row := uint32(1)
	for i := 1; i < 32; i++ {
		odd[i] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	// op is the product so far, starting at the identity.
	var op Shift
	for i := range op {
		op[i] = 1 << i
	}
	mul := func(m *[32]uint32) { // op = m applied after op
		var out Shift
		for i := range out {
			out[i] = gf2Times(m, op[i])
		}
		op = out
	}
	for n > 0 {
		gf2Square(&even, &odd) // first pass: one zero byte
		if n&1 != 0 {
			mul(&even)
		}
		n >>= 1
		if n == 0 {
			break
		}
		gf2Square(&odd, &even)
		if n&1 != 0 {
			mul(&odd)
		}
		n >>= 1
	}
	return op
}

// Apply shifts crc by the operator's zero bytes.
func (s *Shift) Apply(crc uint32) uint32 {
	return gf2Times((*[32]uint32)(s), crc)
}

// ShiftTable is a Shift tabulated by byte, for applying it many times (a
// GPU's blocks): four lookups instead of 32 steps.
type ShiftTable [4][256]uint32

// Table tabulates the operator: being linear, it is the XOR of its values
// on each byte of the register.
func (s *Shift) Table() *ShiftTable {
	var t ShiftTable
	for k := range t {
		for b := range 256 {
			t[k][b] = s.Apply(uint32(b) << (8 * k))
		}
	}
	return &t
}

// Apply shifts crc by the operator's zero bytes.
func (t *ShiftTable) Apply(crc uint32) uint32 {
	return t[0][crc&0xff] ^ t[1][crc>>8&0xff] ^ t[2][crc>>16&0xff] ^ t[3][crc>>24]
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
