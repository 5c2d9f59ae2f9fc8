package sim_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

const chunk = sim.Granularity

// TestVirtualMemoryAsAGPUHasIt: reserved address space holds nothing until
// pieces are mapped; reading unmapped memory fails (a GPU faults); a read
// across two pieces works; pieces go back whole only, and what they held is
// gone; a reservation with anything mapped cannot be given back; virtual
// memory has no IPC handle.
func TestVirtualMemoryAsAGPUHasIt(t *testing.T) {
	ctx := context.Background()
	b := sim.New(sim.Default(1, GiB))
	free := func() int64 { mi, _ := b.MemInfo(ctx, 0); return mi.FreeBytes }
	base, err := b.Reserve(ctx, 0, 8*chunk)
	if err != nil {
		t.Fatal(err)
	}
	if free() != GiB {
		t.Errorf("a reservation took %d bytes, want none", GiB-free())
	}
	at := func(off int64) device.Location { return device.Location{Kind: device.VRAM, Addr: base + uint64(off)} }
	if err := b.Read(ctx, at(0), make([]byte, 1)); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("read of unmapped memory: %v, want a fault", err)
	}
	// Two adjacent pieces, chunks 0-1 and 2-3.
	for _, p := range []struct{ off, n int64 }{{0, 2 * chunk}, {2 * chunk, 2 * chunk}} {
		if err := b.Map(ctx, 0, base+uint64(p.off), p.n); err != nil {
			t.Fatalf("map %+v: %v", p, err)
		}
	}
	if free() != GiB-4*chunk {
		t.Errorf("mapped 4 chunks, %d bytes used", GiB-free())
	}
	pattern := bytes.Repeat([]byte("piece"), 1000)
	across := at(2*chunk - 100) // the last 100 bytes of one piece, and the next
	if err := b.Write(ctx, across, pattern); err != nil {
		t.Fatalf("write across two pieces: %v", err)
	}
	got := make([]byte, len(pattern))
	if err := b.Read(ctx, across, got); err != nil || !bytes.Equal(got, pattern) {
		t.Errorf("read across two pieces: %v, same bytes %v", err, bytes.Equal(got, pattern))
	}
	if err := b.Read(ctx, at(4*chunk-1), make([]byte, 2)); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("read running into unmapped memory: %v, want a fault", err)
	}

	refused := []struct {
		what string
		err  error
	}{
		{"mapping a chunk twice", b.Map(ctx, 0, base+chunk, 2*chunk)},
		{"mapping part of a chunk", b.Map(ctx, 0, base+4*chunk, chunk/2)},
		{"mapping outside the reservation", b.Map(ctx, 0, base+7*chunk, 2*chunk)},
		{"unmapping part of a piece", b.Unmap(ctx, 0, base, chunk)},
		{"unmapping two pieces at once", b.Unmap(ctx, 0, base, 4*chunk)},
		{"giving back a reservation with pieces mapped", b.Unreserve(ctx, 0, base, 8*chunk)},
		{"freeing a reservation as a segment", b.Free(ctx, 0, device.VRAM, base)},
	}
	for _, r := range refused {
		if !errors.Is(r.err, device.ErrNotFound) {
			t.Errorf("%s: %v, want refused", r.what, r.err)
		}
	}
	if _, err := b.Export(ctx, 0, base); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("IPC handle for virtual memory: %v, want refused", err)
	}
	if segs := b.Segments(0, device.VRAM); len(segs) != 1 || segs[0].Size != 4*chunk || segs[0].Reserved != 8*chunk {
		t.Errorf("segments %+v, want one reservation of 8 chunks with 4 mapped", segs)
	}
	if free() != GiB-4*chunk {
		t.Errorf("refused calls changed what is used: %d bytes", GiB-free())
	}

	if err := b.Unmap(ctx, 0, base+2*chunk, 2*chunk); err != nil {
		t.Fatal(err)
	}
	if err := b.Read(ctx, at(2*chunk), make([]byte, 1)); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("read of a piece given back: %v, want a fault", err)
	}
	if err := b.Map(ctx, 0, base+2*chunk, 2*chunk); err != nil {
		t.Fatal(err)
	}
	fresh := make([]byte, 100)
	if err := b.Read(ctx, at(2*chunk), fresh); err != nil || !bytes.Equal(fresh, make([]byte, 100)) {
		t.Errorf("a piece mapped again holds %q (%v), want what it held gone", fresh, err)
	}
	for _, off := range []int64{0, 2 * chunk} {
		if err := b.Unmap(ctx, 0, base+uint64(off), 2*chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Unreserve(ctx, 0, base, 8*chunk); err != nil {
		t.Fatalf("giving back an empty reservation: %v", err)
	}
	if free() != GiB || len(b.Segments(0, device.VRAM)) != 0 {
		t.Errorf("after everything went back: %d bytes used, segments %+v", GiB-free(), b.Segments(0, device.VRAM))
	}
}
