//go:build cuda

package integration

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/cuda"
)

// newTestBackend is the host's real GPUs, each limited to a slice of bytes
// so the tests reach pressure levels; it skips when the host has fewer
// than n GPUs, and frees everything when the test ends. vmm false turns
// virtual memory management off (--vmm=false).
//
// BENCH_PIN_THREADS sets how many threads page-lock fresh host memory, and
// BENCH_PIN_CONTEXTS how many contexts of their own they register with,
// for the host path benchmarks (unset: the backend's defaults).
func newTestBackend(t testing.TB, n int, bytes int64, vmm bool) testBackend {
	t.Helper()
	cfg := cuda.Config{MemoryLimit: bytes, Devices: n, DisableVMM: !vmm}
	for name, v := range map[string]*int{"BENCH_PIN_THREADS": &cfg.PinThreads, "BENCH_PIN_CONTEXTS": &cfg.PinContexts} {
		if s := os.Getenv(name); s != "" {
			if _, err := fmt.Sscan(s, v); err != nil {
				t.Fatalf("%s %q", name, s)
			}
		}
	}
	b, err := cuda.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	infos, _ := b.Devices(t.Context())
	if len(infos) < n {
		b.Close()
		t.Skipf("needs %d GPUs, the host has %d", n, len(infos))
	}
	t.Cleanup(b.Close)
	return b
}

func setExternal(b testBackend, dev int, bytes int64) error {
	return b.(*cuda.Backend).SetExternalUsage(dev, bytes)
}

// heldBytes is the memory of kind the backend holds for segments on dev
// (pinned memory is the host's, whatever the device).
func heldBytes(b testBackend, dev int, kind device.Kind) int64 {
	var n int64
	for _, s := range b.(*cuda.Backend).Segments(dev, kind) {
		n += s.Size
	}
	return n
}

// peerScript opens a CUDA IPC handle with CuPy in its own process and
// writes the bytes read from stdin at an offset into the memory.
const peerScript = `
import sys, base64, numpy, cupy
handle, offset = base64.b64decode(sys.argv[1]), int(sys.argv[2])
data = numpy.frombuffer(sys.stdin.buffer.read(), dtype=numpy.uint8)
ptr = cupy.cuda.runtime.ipcOpenMemHandle(handle)
mem = cupy.cuda.UnownedMemory(ptr, offset + data.size, None)
view = cupy.ndarray((data.size,), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(mem, offset))
view.set(data)
cupy.cuda.runtime.deviceSynchronize()
cupy.cuda.runtime.ipcCloseMemHandle(ptr)
print("wrote", data.size, "bytes at offset", offset)
`

// peerWrite plays another process of the host with CuPy.
func peerWrite(t testing.TB, _ testBackend, handle []byte, offset int64, data []byte) {
	t.Helper()
	cmd := exec.Command("python3", "-c", peerScript, base64.StdEncoding.EncodeToString(handle), fmt.Sprint(offset))
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("CuPy peer process: %v\n%s", err, out)
	}
	t.Logf("CuPy peer process: %s", strings.TrimSpace(string(out)))
}

// rawCopies times the driver copying each of locs (size bytes each) to
// page-locked host memory allocated beforehand (cuMemHostAlloc) and back,
// one synchronous cuMemcpyDtoH/HtoD per allocation: the reference the host
// path benchmarks compare against.
func rawCopies(tb testing.TB, b testBackend, locs []device.Location, size int64) (d2h, h2d time.Duration) {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dev, err := cu.GetDevice(locs[0].Device)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, err := dev.RetainPrimaryCtx()
	if err != nil {
		tb.Fatal(err)
	}
	defer dev.ReleasePrimaryCtx()
	if err := cu.SetCurrentContext(ctx); err != nil {
		tb.Fatal(err)
	}
	host, err := cuda.HostAlloc(size * int64(len(locs)))
	if err != nil {
		tb.Fatal(err)
	}
	defer cu.MemFreeHost(host)
	each := func(f func(i int, h unsafe.Pointer) error) time.Duration {
		start := time.Now()
		for i := range locs {
			if err := f(i, unsafe.Add(host, int64(i)*size)); err != nil {
				tb.Fatal(err)
			}
		}
		return time.Since(start)
	}
	d2h = each(func(i int, h unsafe.Pointer) error { return cu.MemcpyDtoH(h, cu.DevicePtr(locs[i].Addr), size) })
	h2d = each(func(i int, h unsafe.Pointer) error { return cu.MemcpyHtoD(cu.DevicePtr(locs[i].Addr), h, size) })
	return d2h, h2d
}

// rawPeerCopy times one cuMemcpyPeer of n bytes at src to memory of device
// dst allocated beforehand, synchronised: the reference for peer
// transfers.
func rawPeerCopy(tb testing.TB, b testBackend, src device.Location, dst int, n int64) time.Duration {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctxs := make([]cu.CUContext, 2)
	for i, d := range []int{src.Device, dst} {
		dev, err := cu.GetDevice(d)
		if err != nil {
			tb.Fatal(err)
		}
		if ctxs[i], err = dev.RetainPrimaryCtx(); err != nil {
			tb.Fatal(err)
		}
		defer dev.ReleasePrimaryCtx()
	}
	if err := cu.SetCurrentContext(ctxs[1]); err != nil {
		tb.Fatal(err)
	}
	to, err := cu.MemAlloc(n)
	if err != nil {
		tb.Fatal(err)
	}
	defer cu.MemFree(to)
	start := time.Now()
	if err := cu.MemcpyPeer(to, ctxs[1], cu.DevicePtr(src.Addr), ctxs[0], n); err != nil {
		tb.Fatal(err)
	}
	if err := cu.Synchronize(); err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}
