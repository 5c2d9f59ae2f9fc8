//go:build !cuda

package integration

import (
	"context"
	"testing"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

// newTestBackend is a simulated host of n devices of bytes each.
func newTestBackend(_ testing.TB, n int, bytes int64) testBackend {
	return sim.New(sim.Default(n, bytes))
}

func setExternal(b testBackend, dev int, bytes int64) error {
	b.(*sim.Backend).SetExternalUsage(dev, bytes)
	return nil
}

// heldBytes is the VRAM the backend holds for segments on dev.
func heldBytes(b testBackend, dev int) int64 {
	var n int64
	for _, s := range b.(*sim.Backend).Segments(dev, device.VRAM) {
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
