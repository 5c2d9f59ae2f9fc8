package integration

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// pattern is the content test allocations carry: a function of the
// allocation's seed and the byte's offset, repeating every patternPeriod
// bytes (it reads the offset's low 24 bits).
func pattern(seed byte, n int64) []byte {
	p := make([]byte, n)
	per := period(seed, n)
	for off := 0; off < len(p); off += copy(p[off:], per) {
	}
	return p
}

const patternPeriod = 1 << 24

// periods holds the start of each seed's pattern, up to one period:
// written byte by byte once, then copied, which the race detector checks
// many times faster than writes of single bytes (allocations of 100 MiB
// are common here). It grows to the longest asked for.
var periods sync.Map // seed → []byte

// period returns the first min(n, patternPeriod) bytes of seed's pattern.
func period(seed byte, n int64) []byte {
	n = min(n, patternPeriod)
	if p, ok := periods.Load(seed); ok && int64(len(p.([]byte))) >= n {
		return p.([]byte)[:n]
	}
	p := make([]byte, n)
	for i := range p {
		p[i] = seed ^ byte(i) ^ byte(i>>8) ^ byte(i>>16)
	}
	periods.Store(seed, p) // a racing longer one may be lost: it is built again
	return p
}

func write(t *testing.T, h *host, dev, id string, seed byte) {
	t.Helper()
	loc, n, err := h.Locate(dev, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.dev.Write(context.Background(), loc, pattern(seed, n)); err != nil {
		t.Fatal(err)
	}
}

func checkContent(t *testing.T, h *host, dev, id string, seed byte) {
	t.Helper()
	loc, n, err := h.Locate(dev, id)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if err := h.dev.Read(context.Background(), loc, got); err != nil {
		t.Fatal(err)
	}
	per := period(seed, n)
	for off := 0; off < len(got); off += len(per) {
		if !bytes.Equal(got[off:min(off+len(per), len(got))], per[:min(len(per), len(got)-off)]) {
			t.Fatalf("allocation %s on %s lost its content", id, dev)
		}
	}
}

func TestDefragmentMovesBlocksAndPreservesEveryByte(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, 2*GiB), withoutVMM())
	nc := connect(t, srv)
	dev := "n1-gpu0"
	// 48 blocks of 3 MiB fill 8 shared 20 MiB segments (6 each); freeing
	// all but one or two per segment leaves them sparse.
	var ids []string
	for i := 0; i < 48; i++ {
		var a subjects.Allocation
		call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 3*MiB - 1000, Purpose: "frag"}, &a)
		ids = append(ids, a.AllocationID)
	}
	keep := map[string]byte{}
	var free []string
	for i, id := range ids {
		if i%6 == 0 || i%12 == 5 {
			keep[id] = byte(i + 1)
			write(t, h, dev, id, byte(i+1))
		} else {
			free = append(free, id)
		}
	}
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: free}, nil)
	before := checkLedger(t, nc, h, dev, 0)

	var d subjects.DefragmentReply
	call(t, nc, subjects.Defragment, dev, nil, &d)
	if d.BlocksMoved == 0 || d.SegmentsReleased == 0 || d.BytesMoved == 0 || d.DurationSeconds <= 0 {
		t.Fatalf("defragment did nothing: %+v", d)
	}
	if d.After.FragmentationRatio >= d.Before.FragmentationRatio || d.Before.FragmentationRatio < 0.3 {
		t.Errorf("fragmentation %v -> %v, want a drop from a fragmented pool", d.Before.FragmentationRatio, d.After.FragmentationRatio)
	}
	after := checkLedger(t, nc, h, dev, 0)
	if after.ReservedBytes != before.ReservedBytes-d.ReleasedBytes || after.UsedBytes >= before.UsedBytes {
		t.Errorf("reserved %d -> %d, released %d: the device did not get the memory back", before.ReservedBytes, after.ReservedBytes, d.ReleasedBytes)
	}
	for id, seed := range keep {
		checkContent(t, h, dev, id, seed) // same ids, same bytes
	}
	// Moved allocations can still be freed by their ids.
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, nil, &page)
	if page.TotalCount != len(keep) {
		t.Errorf("%d allocations after defragment, want %d", page.TotalCount, len(keep))
	}
	for id := range keep {
		call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: id}, nil)
	}
	checkLedger(t, nc, h, dev, 0)
}

// waitTransfer polls get_transfer until the job ends.
func waitTransfer(t testing.TB, nc *nats.Conn, dev, id string) subjects.TransferStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	pause := 100 * time.Microsecond // short copies end in a millisecond
	for {
		var st subjects.TransferStatus
		call(t, nc, subjects.GetTransfer, dev, subjects.GetTransferRequest{TransferID: id}, &st)
		if st.Status == subjects.TransferCompleted || st.Status == subjects.TransferFailed {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer %s still %s", id, st.Status)
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}

func TestTransferCopiesAndMovesContent(t *testing.T) {
	t.Parallel() // a server and worker of its own: runs beside the other long ones
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, 4*GiB))
	nc := connect(t, srv)
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 70*MiB + 7, Purpose: "weights", ModelID: "m"}, &a)
	write(t, h, "n1-gpu0", a.AllocationID, 42)

	// Copy to the other device, verified.
	var st subjects.TransferStatus
	call(t, nc, subjects.Transfer, "n1-gpu0", subjects.TransferRequest{AllocationID: a.AllocationID, TargetDeviceID: "n1-gpu1", Verify: true}, &st)
	if st.TransferID == "" || (st.Status != subjects.TransferQueued && st.Status != subjects.TransferRunning) || st.BytesTotal != a.SizeBytes {
		t.Fatalf("transfer reply %+v: want a queued job", st)
	}
	done := waitTransfer(t, nc, "n1-gpu0", st.TransferID)
	if done.Status != subjects.TransferCompleted || done.BytesDone != a.SizeBytes || !done.Verified || done.Checksum == "" ||
		done.DestinationAllocationID == "" || done.StartedAt == nil || done.CompletedAt == nil || done.ThroughputBytesPerSecond <= 0 {
		t.Fatalf("finished transfer %+v", done)
	}
	if done.CopySeconds <= 0 || done.CopyThroughputBytesPerSecond < done.ThroughputBytesPerSecond {
		t.Errorf("phases of %+v: the copy alone is at least as fast as end to end", done)
	}
	checkContent(t, h, "n1-gpu1", done.DestinationAllocationID, 42)
	checkContent(t, h, "n1-gpu0", a.AllocationID, 42) // a copy leaves the source
	var dest subjects.Allocation
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, "n1-gpu1", nil, &page)
	if page.TotalCount != 1 {
		t.Fatalf("target lists %d allocations, want the copy", page.TotalCount)
	}
	dest = page.Allocations[0]
	if dest.ModelID != "m" || dest.Purpose != "weights" || dest.SizeBytes != a.SizeBytes || dest.DeviceID != "n1-gpu1" {
		t.Errorf("copy %+v does not keep the source's labels", dest)
	}
	// The target device also answers get_transfer for it.
	var fromTarget subjects.TransferStatus
	call(t, nc, subjects.GetTransfer, "n1-gpu1", subjects.GetTransferRequest{TransferID: st.TransferID}, &fromTarget)

	// Move to pinned host memory: the source is freed.
	call(t, nc, subjects.Transfer, "n1-gpu0", subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Mode: "move"}, &st)
	done = waitTransfer(t, nc, "n1-gpu0", st.TransferID)
	if done.Status != subjects.TransferCompleted || done.TargetAllocationType != subjects.Pinned {
		t.Fatalf("move to host: %+v", done)
	}
	checkContent(t, h, "n1-gpu0", done.DestinationAllocationID, 42)
	if _, _, err := h.Locate("n1-gpu0", a.AllocationID); err == nil {
		t.Error("the moved source is still allocated")
	}
	u := checkLedger(t, nc, h, "n1-gpu0", 0)
	if u.AllocatedBytes != 0 || u.PinnedHostBytes < a.SizeBytes {
		t.Errorf("after the move: %+v, want nothing on the device and the bytes in pinned host memory", u)
	}
	checkLedger(t, nc, h, "n1-gpu1", 1)
}

func TestTransferErrors(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, GiB))
	nc := connect(t, srv)
	var a, big subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 8 * MiB}, &a)
	call(t, nc, subjects.Allocate, "n1-gpu1", subjects.AllocateRequest{SizeBytes: 900 * MiB}, &big)
	req := func(data string) []byte { return []byte(`{"data":` + data + `}`) }
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`","mode":"move"}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`","mode":"teleport"}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`","target_device_id":"n2-gpu0"}`), subjects.CodeUnsupported)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`","target_device_id":"n1-gpu7"}`), subjects.CodeDeviceNotFound)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"nope","target_device_id":"n1-gpu1"}`), subjects.CodeAllocationNotFound)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"target_device_id":"n1-gpu1"}`), subjects.CodeInvalidRequest)
	callErr(t, nc, subjects.GetTransfer, "n1-gpu0", req(`{"transfer_id":"nope"}`), subjects.CodeTransferNotFound)
	callErr(t, nc, subjects.GetTransfer, "n1-gpu0", req(`{}`), subjects.CodeInvalidRequest)

	// 900 MiB do not fit on gpu0 once 208 MiB of its 1 GiB are taken: the
	// job fails with OUT_OF_MEMORY and changes nothing.
	var fill subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 200 * MiB}, &fill)
	var st subjects.TransferStatus
	call(t, nc, subjects.Transfer, "n1-gpu1", subjects.TransferRequest{AllocationID: big.AllocationID, TargetDeviceID: "n1-gpu0"}, &st)
	done := waitTransfer(t, nc, "n1-gpu1", st.TransferID)
	if done.Status != subjects.TransferFailed || done.ErrorCode != subjects.CodeOutOfMemory || done.DestinationAllocationID != "" {
		t.Errorf("transfer that cannot fit: %+v", done)
	}
	checkLedger(t, nc, h, "n1-gpu0", 0)
	checkLedger(t, nc, h, "n1-gpu1", 1)

	call(t, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
}

// TestBusyAllocationsAreNeitherFreedNorTransferredTwice slows the copy
// engine so a transfer is seen running.
func TestBusyAllocationsAreNeitherFreedNorTransferredTwice(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, GiB))
	nc := connect(t, srv)
	h.faults(t).SetCopyDelay(300 * time.Millisecond)
	req := func(data string) []byte { return []byte(`{"data":` + data + `}`) }
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 8 * MiB}, &a)
	var st subjects.TransferStatus
	call(t, nc, subjects.Transfer, "n1-gpu0", subjects.TransferRequest{AllocationID: a.AllocationID, TargetDeviceID: "n1-gpu1"}, &st)
	callErr(t, nc, subjects.Deallocate, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`"}`), subjects.CodeConflict)
	callErr(t, nc, subjects.Transfer, "n1-gpu0", req(`{"allocation_id":"`+a.AllocationID+`","target_device_id":"n1-gpu1"}`), subjects.CodeConflict)
	var running subjects.TransferStatus
	call(t, nc, subjects.GetTransfer, "n1-gpu0", subjects.GetTransferRequest{TransferID: st.TransferID}, &running)
	if running.Status != subjects.TransferRunning && running.Status != subjects.TransferQueued {
		t.Errorf("slow transfer is %s, want running", running.Status)
	}
	if done := waitTransfer(t, nc, "n1-gpu0", st.TransferID); done.Status != subjects.TransferCompleted {
		t.Errorf("slow transfer: %+v", done)
	}
	call(t, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	checkLedger(t, nc, h, "n1-gpu0", 0)
}

// TestDefragmentGivesFreeMemoryBackWithoutCopying: with every other block
// freed, defragment gives the freed memory back to the device without
// moving a byte: whole empty segments of their own (virtual memory off),
// or, on virtual memory, every free chunk of the one growing segment.
func TestDefragmentGivesFreeMemoryBackWithoutCopying(t *testing.T) {
	for _, tc := range []struct {
		name     string
		vmm      bool
		size     int64
		segments int // released
	}{
		{"segments/256MiB", false, 256 * MiB, 50},
		{"vmm/256MiB", true, 256 * MiB, 0},
		{"vmm/8MiB", true, 8 * MiB, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			opts := []hostOpt{withDevices(1, 32*GiB), withConfig(func(c *worker.Config) { c.AutoRelease = false })}
			if !tc.vmm {
				opts = append(opts, withoutVMM())
			}
			h := startWorker(t, srv, "n1", opts...)
			if tc.vmm {
				h.needsVMM(t)
			}
			nc := connect(t, srv)
			dev := "n1-gpu0"
			var ids []string
			for range 100 {
				var a subjects.Allocation
				call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: tc.size}, &a)
				ids = append(ids, a.AllocationID)
			}
			var freed []string
			for i := 1; i < len(ids); i += 2 {
				freed = append(freed, ids[i])
			}
			call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: freed}, nil)
			var before, after subjects.Usage
			call(t, nc, subjects.GetUsage, dev, nil, &before)
			var r subjects.DefragmentReply
			call(t, nc, subjects.Defragment, dev, nil, &r)
			t.Logf("defragment: %+v", r)
			if r.BytesMoved != 0 || r.BlocksMoved != 0 || r.SegmentsReleased != tc.segments || r.ReleasedBytes != 50*tc.size {
				t.Errorf("defragment: moved %d bytes (%d blocks), released %d segments (%d bytes); want nothing moved, %d segments and %d bytes released",
					r.BytesMoved, r.BlocksMoved, r.SegmentsReleased, r.ReleasedBytes, tc.segments, 50*tc.size)
			}
			call(t, nc, subjects.GetUsage, dev, nil, &after)
			if before.UsedBytes-after.UsedBytes != r.ReleasedBytes {
				t.Errorf("device truth: used %d -> %d, want a drop of the %d bytes released", before.UsedBytes, after.UsedBytes, r.ReleasedBytes)
			}
			var st subjects.StatusReply
			call(t, nc, subjects.GetStatus, dev, subjects.StatusRequest{}, &st)
			if g := st.Device.VirtualMemoryGranularityBytes; (g == 2*MiB) != tc.vmm {
				t.Errorf("virtual memory %v: the device says granularity %d", tc.vmm, g)
			}
			if s := st.UsageStats; tc.vmm && (s == nil || s.Segments != 1 || s.ReservedBytes != s.AllocatedBytes) {
				t.Errorf("pool after defragment: %+v; want one segment mapping only the live blocks", st.UsageStats)
			}
			checkLedger(t, nc, h, dev, 0)
		})
	}
}
