package sim_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

var _ worker.Backend = (*sim.Backend)(nil)

const GiB = int64(1) << 30

func TestDevicesAndMemInfo(t *testing.T) {
	ctx := context.Background()
	b := sim.New(sim.Default(2, 16*GiB))
	infos, err := b.Devices(ctx)
	if err != nil || len(infos) != 2 || infos[1].Index != 1 || infos[1].TotalBytes != 16*GiB || infos[0].UUID == infos[1].UUID {
		t.Fatalf("Devices() = %+v, %v", infos, err)
	}
	addr, err := b.Alloc(ctx, 0, device.VRAM, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if addr%(2<<20) != 0 {
		t.Errorf("segment at %#x is not 2 MiB aligned", addr)
	}
	b.SetExternalUsage(0, GiB)
	mi, _ := b.MemInfo(ctx, 0)
	if mi.TotalBytes != 16*GiB || mi.FreeBytes != 15*GiB-2<<20 {
		t.Errorf("MemInfo = %+v, want a segment and 1 GiB of others used", mi)
	}
	if mi, _ := b.MemInfo(ctx, 1); mi.FreeBytes != 16*GiB {
		t.Errorf("device 1 MemInfo = %+v, want all free", mi)
	}
	if _, err := b.Alloc(ctx, 0, device.VRAM, 15*GiB); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("alloc beyond free: %v, want ErrOutOfMemory", err)
	}
	if err := b.Free(ctx, 0, device.VRAM, addr); err != nil {
		t.Fatal(err)
	}
	if err := b.Free(ctx, 0, device.VRAM, addr); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("double free: %v, want ErrNotFound", err)
	}
}

func TestBytesAreStoredLazilyAndCopied(t *testing.T) {
	ctx := context.Background()
	b := sim.New(sim.Default(2, 16*GiB))
	// A 16 GiB segment costs nothing until written.
	big, err := b.Alloc(ctx, 0, device.VRAM, 16*GiB)
	if err != nil {
		t.Fatal(err)
	}
	pattern := bytes.Repeat([]byte("memworker"), 20000) // crosses chunk boundaries
	at := big + 8*uint64(GiB) - 100
	if err := b.Write(ctx, device.Location{Device: 0, Kind: device.VRAM, Addr: at}, pattern); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pattern)+10)
	if err := b.Read(ctx, device.Location{Device: 0, Kind: device.VRAM, Addr: at - 10}, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:10], make([]byte, 10)) || !bytes.Equal(got[10:], pattern) {
		t.Error("read back differs from what was written")
	}

	// Copy to another device's pinned memory, then an overlapping move.
	dst, _ := b.Alloc(ctx, 1, device.Pinned, 2<<20)
	if err := b.Copy(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst}, device.Location{Device: 0, Kind: device.VRAM, Addr: at}, int64(len(pattern))); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(pattern))
	_ = b.Read(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst}, out)
	if !bytes.Equal(out, pattern) {
		t.Error("copy to pinned memory differs")
	}
	if err := b.Copy(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst + 1000}, device.Location{Device: 1, Kind: device.Pinned, Addr: dst}, int64(len(pattern))); err != nil {
		t.Fatal(err)
	}
	_ = b.Read(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst + 1000}, out)
	if !bytes.Equal(out, pattern) {
		t.Error("overlapping move corrupted the data")
	}
	// Copying memory never written zeroes the destination.
	if err := b.Copy(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst}, device.Location{Device: 0, Kind: device.VRAM, Addr: big + 100}, 150_000); err != nil {
		t.Fatal(err)
	}
	_ = b.Read(ctx, device.Location{Device: 1, Kind: device.Pinned, Addr: dst}, out[:150_000])
	if !allZero(out[:150_000]) {
		t.Error("copy of unwritten memory left old bytes")
	}
	if err := b.Write(ctx, device.Location{Device: 0, Kind: device.VRAM, Addr: big + uint64(16*GiB) - 1}, []byte{1, 2}); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("write past the segment: %v, want ErrNotFound", err)
	}
}

func TestFaultInjection(t *testing.T) {
	ctx := context.Background()
	b := sim.New(sim.Config{Devices: []sim.Spec{{Name: "a", TotalBytes: GiB}}, PinnedBytes: 4 << 20})
	b.FailAllocs(0, 1)
	if _, err := b.Alloc(ctx, 0, device.VRAM, 2<<20); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("injected failure: %v", err)
	}
	addr, err := b.Alloc(ctx, 0, device.VRAM, 2<<20)
	if err != nil {
		t.Fatalf("after the injected failure: %v", err)
	}
	if _, err := b.Alloc(ctx, 0, device.Pinned, 8<<20); !errors.Is(err, device.ErrOutOfMemory) {
		t.Errorf("pinned beyond the host's capacity: %v", err)
	}
	b.SetUnavailable(0, true)
	if _, err := b.MemInfo(ctx, 0); !errors.Is(err, device.ErrUnavailable) {
		t.Errorf("MemInfo of an unavailable device: %v", err)
	}
	if err := b.Free(ctx, 0, device.VRAM, addr); err != nil {
		t.Errorf("freeing on an unavailable device must still work: %v", err)
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
