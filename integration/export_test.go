package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"testing"

	"github.com/memworker/memworker/subjects"
)

// TestExportedMemoryIsSharedAndNeverMoved allocates with export, lets
// another process write through the IPC handle, reads the bytes back in
// the worker, and checks defragment and offload leave the allocation alone.
func TestExportedMemoryIsSharedAndNeverMoved(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 3*MiB + 100, Export: true, ModelID: "shared"}, &a)
	if !a.Exported || a.IPCHandle == "" || a.IPCOffset != 0 || a.ReservedBytes != 4*MiB {
		t.Fatalf("exported allocation %+v: want a handle to a 4 MiB segment of its own", a)
	}
	handle, err := base64.StdEncoding.DecodeString(a.IPCHandle)
	if err != nil || len(handle) != 64 {
		t.Fatalf("ipc_handle is not a base64 64-byte handle: %v", err)
	}
	data := pattern(0x5a, 64<<10)
	peerWrite(t, h.dev, handle, a.IPCOffset+4096, data)

	readBack := func() []byte {
		loc, _, err := h.Locate(dev, a.AllocationID)
		if err != nil {
			t.Fatal(err)
		}
		loc.Addr += 4096
		got := make([]byte, len(data))
		if err := h.dev.Read(context.Background(), loc, got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if !bytes.Equal(readBack(), data) {
		t.Fatal("the worker does not see what the other process wrote")
	}

	// Fragment the pool around it, then defragment and offload everything
	// idle: the exported allocation stays where the other process maps it.
	var others []string
	for i := 0; i < 12; i++ {
		var o subjects.Allocation
		call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 3 * MiB}, &o)
		if i%3 != 0 {
			others = append(others, o.AllocationID)
		}
	}
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: others}, nil)
	before, _, _ := h.Locate(dev, a.AllocationID)
	var d subjects.DefragmentReply
	call(t, nc, subjects.Defragment, dev, nil, &d)
	if d.UnmovedAllocations != 1 {
		t.Errorf("defragment left %d allocations unmoved, want the exported one", d.UnmovedAllocations)
	}
	var o subjects.OptimizeReply
	call(t, nc, subjects.Optimize, dev, subjects.OptimizeRequest{Strategies: []string{"offload_idle"}, IdleSeconds: 1e-9}, &o)
	for _, id := range o.Actions[0].AllocationIDs {
		if id == a.AllocationID {
			t.Error("offload_idle offloaded an exported allocation")
		}
	}
	after, _, _ := h.Locate(dev, a.AllocationID)
	if after != before || !bytes.Equal(readBack(), data) {
		t.Errorf("exported allocation moved from %+v to %+v", before, after)
	}
	callErr(t, nc, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":1024,"export":true,"allocation_type":"PINNED"}}`), subjects.CodeInvalidRequest)
	// Freeing it returns its own segment to the device at once.
	u0 := checkLedger(t, nc, h, dev, 0)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
	if u := checkLedger(t, nc, h, dev, 0); u.ReservedBytes != u0.ReservedBytes-4*MiB {
		t.Errorf("reserved %d -> %d, want the exported segment returned", u0.ReservedBytes, u.ReservedBytes)
	}
}

func TestUsageListsProcesses(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 64 * MiB}, nil)
	h.external(t, 0, 100*MiB)
	defer h.external(t, 0, 0)
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &u)
	if len(u.Processes) == 0 || u.OtherBytes < 100*MiB {
		t.Errorf("usage %+v: want the processes using the device and 100 MiB of others' use", u)
	}
}
