package worker

import (
	"context"
	"hash/crc32"
	"log/slog"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/crc32c"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
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

// runOneTransfer asks for a verified copy of a fresh allocation of size
// bytes to pinned host memory and runs the job as a runner would.
func runOneTransfer(t *testing.T, w *Worker, b *sim.Backend, size int64) subjects.TransferStatus {
	t.Helper()
	ctx := context.Background()
	g := w.gpus[0]
	a, _, err := g.Allocate(ctx, ledger.Call{Now: time.Now()}, &subjects.AllocateRequest{SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	pattern := make([]byte, size)
	for i := range pattern {
		pattern[i] = byte(i * 7)
	}
	loc, _, err := w.Locate(g.ID(), a.AllocationID)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, loc, pattern); err != nil {
		t.Fatal(err)
	}
	if _, err := w.transfer(ctx, g, ledger.Call{Now: time.Now()}, &subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Verify: true, Mode: subjects.ModeCopy}); err != nil {
		t.Fatal(err)
	}
	j := <-w.transfers.queue
	w.runTransfer(ctx, j)
	return j.snapshot(j.status.CreatedAt)
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
			w, b := testWorker(t, "v1", func(c *Config) {
				c.Backend = &corrupting{Backend: c.Backend.(*sim.Backend), flip: tc.corrupt}
				if tc.inPlace {
					c.Backend = summing{c.Backend.(*corrupting)}
				}
				c.Logger = slog.New(slog.DiscardHandler)
			})
			// Three chunks and a bit: spans reach the verifier in order.
			st := runOneTransfer(t, w, b, 3*transferChunk+4099)
			if tc.corrupt {
				if st.Status != subjects.TransferFailed || st.ErrorCode != subjects.CodeInternal || st.Verified || st.DestinationAllocationID != "" {
					t.Fatalf("corrupt copy: %+v", st)
				}
				if page := w.gpus[0].Allocations(&subjects.AllocationsRequest{AllocationType: subjects.Pinned}, ledger.Who{}); page.TotalCount != 0 {
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
