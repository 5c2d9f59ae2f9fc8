package transfer_test

import (
	"context"
	"hash/crc32"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/crc32c"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/monitor"
	"github.com/memworker/memworker/worker/transfer"
)

// corrupting copies like the sim, then flips a byte in the middle of each
// copied chunk when flip is set.
type corrupting struct {
	*sim.Backend
	flip bool
}

func (c *corrupting) Copy(ctx context.Context, dst, src device.Location, n int64) error {
	if err := c.Backend.Copy(ctx, dst, src, n); err != nil || !c.flip {
		return err
	}
	at := dst
	at.Addr += uint64(n / 2)
	b := make([]byte, 1)
	if err := c.Backend.Read(ctx, at, b); err != nil {
		return err
	}
	b[0] ^= 0xff
	return c.Backend.Write(ctx, at, b)
}

// summing is corrupting with a Checksum of its own (summed from reads, as
// a GPU would sum where the memory lies): the verifier's in-place path.
type summing struct{ *corrupting }

func (s summing) Checksum(ctx context.Context, at device.Location, n int64) (uint32, error) {
	p := make([]byte, n)
	if err := s.Read(ctx, at, p); err != nil {
		return 0, err
	}
	return crc32.Checksum(p, crc32c.Table), nil
}

// plain is a device whose ledger a test reaches under a lock.
type plain struct {
	mu sync.Mutex
	d  *ledger.Device
}

func (p *plain) ID() string { return p.d.ID() }
func (p *plain) Do(f func(*ledger.Device)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p.d)
}

// newDevice is the ledger of the first device of b.
func newDevice(t *testing.T, b ledger.Backend, infos []device.Info) *plain {
	t.Helper()
	return &plain{d: ledger.New(ledger.Config{ID: "n-gpu0", Node: "n", Info: infos[0], Backend: b, Thresholds: monitor.DefaultThresholds()})}
}

// testChunk is the managers' bytes per copy: small, so a transfer of a
// few chunks is quick under the race detector.
const testChunk = 1 << 20

// newManager is a manager of b's transfers that keeps an hour of history.
func newManager(b transfer.Backend) *transfer.Manager {
	return transfer.New(transfer.Config{Backend: b, Chunk: testChunk, Retention: time.Hour, HistoryBytes: 1 << 20,
		Code: func(err error) (subjects.Code, string) { return subjects.CodeInternal, err.Error() },
		Log:  slog.New(slog.DiscardHandler)})
}

// runOneTransfer asks for a verified copy of a fresh allocation of size
// bytes to pinned host memory and waits for it.
func runOneTransfer(t *testing.T, m *transfer.Manager, dev *plain, b *sim.Backend, size int64) subjects.TransferStatus {
	t.Helper()
	ctx := context.Background()
	a, _, err := dev.d.Allocate(ctx, ledger.Call{Now: time.Now()}, &subjects.AllocateRequest{SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	pattern := make([]byte, size)
	for i := range min(256, size) {
		pattern[i] = byte(i * 7)
	}
	for n := int64(256); n < size; n *= 2 { // the same bytes, copied: quick under the race detector
		copy(pattern[n:], pattern[:n])
	}
	loc, _, err := dev.d.Locate(a.AllocationID)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, loc, pattern); err != nil {
		t.Fatal(err)
	}
	lent, err := dev.d.Lend(a.AllocationID, ledger.Target{DeviceID: dev.ID(), TotalBytes: 1 << 30, Type: subjects.Pinned}, subjects.ModeCopy, ledger.Who{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.Submit(transfer.Request{Src: dev, Dst: dev, Lent: lent, Type: subjects.Pinned, Mode: subjects.ModeCopy, Verify: true, Call: ledger.Call{Now: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	close(stop)
	m.Run(ctx, stop) // runs what is queued, then returns
	st, ok := m.Get(st.TransferID, dev.ID(), ledger.Who{}, time.Now())
	if !ok {
		t.Fatal("the transfer is not known")
	}
	return st
}

func TestVerifyRunsAlongTheCopyAndCatchesACorruptCopy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt bool
		inPlace bool // the backend sums memory where it lies
	}{
		{"a good copy is verified", false, false},
		{"a corrupt chunk fails the transfer", true, false},
		{"a good copy is verified where it lies", false, true},
		{"a corrupt chunk fails the transfer where it lies", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := sim.New(sim.Default(1, 1<<30))
			infos, _ := b.Devices(context.Background())
			var backend interface {
				ledger.Backend
				transfer.Backend
			} = &corrupting{Backend: b, flip: tc.corrupt}
			if tc.inPlace {
				backend = summing{backend.(*corrupting)}
			}
			dev := newDevice(t, backend, infos)
			m := newManager(backend)
			// Three chunks and a bit: spans reach the verifier in order.
			st := runOneTransfer(t, m, dev, b, 3*testChunk+4099)
			if tc.corrupt {
				if st.Status != subjects.TransferFailed || st.ErrorCode != subjects.CodeInternal || st.Verified || st.DestinationAllocationID != "" {
					t.Fatalf("corrupt copy: %+v", st)
				}
				if page := dev.d.Allocations(context.Background(), ledger.Call{Who: ledger.Who{}, Now: time.Now()}, &subjects.AllocationsRequest{AllocationType: subjects.Pinned}); page.TotalCount != 0 {
					t.Errorf("the failed copy left %d pinned allocations", page.TotalCount)
				}
				return
			}
			if st.Status != subjects.TransferCompleted || !st.Verified || st.Checksum == "" {
				t.Fatalf("good copy: %+v", st)
			}
			if st.CopySeconds <= 0 || st.SetupSeconds < 0 || st.VerifySeconds < 0 ||
				st.CopyThroughputBytesPerSecond < st.ThroughputBytesPerSecond {
				t.Errorf("phases: setup %v copy %v verify %v, copy rate %v below end-to-end %v",
					st.SetupSeconds, st.CopySeconds, st.VerifySeconds, st.CopyThroughputBytesPerSecond, st.ThroughputBytesPerSecond)
			}
		})
	}
}
