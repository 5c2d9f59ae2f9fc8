//go:build !cuda

package integration

import (
	"context"
	"testing"
	"time"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

// newTestBackend is a simulated host of n devices of bytes each, with
// virtual memory management or without.
func newTestBackend(_ testing.TB, n int, bytes int64, vmm bool) testBackend {
	cfg := sim.Default(n, bytes)
	cfg.DisableVMM = !vmm
	return sim.New(cfg)
}

func setExternal(b testBackend, dev int, bytes int64) error {
	b.(*sim.Backend).SetExternalUsage(dev, bytes)
	return nil
}

// heldBytes is the memory of kind the backend holds for segments on dev
// (pinned memory is the host's, whatever the device).
func heldBytes(b testBackend, dev int, kind device.Kind) int64 {
	var n int64
	for _, s := range b.(*sim.Backend).Segments(dev, kind) {
		n += s.Size
	}
	return n
}

// peerWrite plays another process of the host: it opens an exported
// allocation's IPC handle and writes data at offset into it.
func peerWrite(t testing.TB, b testBackend, handle []byte, offset int64, data []byte) {
	t.Helper()
	loc, err := sim.OpenHandle(handle)
	if err != nil {
		t.Fatal(err)
	}
	loc.Addr += uint64(offset)
	if err := b.Write(context.Background(), loc, data); err != nil {
		t.Fatal(err)
	}
}

// rawCopies times the backend copying each of locs (size bytes each) to
// pinned host memory it holds beforehand, and back: the reference the
// host path benchmarks compare against.
func rawCopies(tb testing.TB, b testBackend, locs []device.Location, size int64) (d2h, h2d time.Duration) {
	tb.Helper()
	ctx := context.Background()
	sb := b.(*sim.Backend)
	host, err := sb.Alloc(ctx, 0, device.Pinned, size*int64(len(locs)))
	if err != nil {
		tb.Fatal(err)
	}
	defer sb.Free(ctx, 0, device.Pinned, host)
	each := func(f func(i int, h device.Location) error) time.Duration {
		start := time.Now()
		for i := range locs {
			h := device.Location{Kind: device.Pinned, Addr: host + uint64(i)*uint64(size)}
			if err := f(i, h); err != nil {
				tb.Fatal(err)
			}
		}
		return time.Since(start)
	}
	d2h = each(func(i int, h device.Location) error { return sb.Copy(ctx, h, locs[i], size) })
	h2d = each(func(i int, h device.Location) error { return sb.Copy(ctx, locs[i], h, size) })
	return d2h, h2d
}

// rawPeerCopy times the backend copying n bytes at src to memory of device
// dst it holds beforehand: the reference for peer transfers.
func rawPeerCopy(tb testing.TB, b testBackend, src device.Location, dst int, n int64) time.Duration {
	tb.Helper()
	ctx := context.Background()
	sb := b.(*sim.Backend)
	to, err := sb.Alloc(ctx, dst, device.VRAM, n)
	if err != nil {
		tb.Fatal(err)
	}
	defer sb.Free(ctx, dst, device.VRAM, to)
	start := time.Now()
	if err := sb.Copy(ctx, device.Location{Device: dst, Kind: device.VRAM, Addr: to}, src, n); err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}
