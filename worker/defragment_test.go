package worker

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
)

// gatedCopies is a sim backend whose copies (a defragment's moves) each
// tell the test they began and wait for it to let them go, until it opens
// the gate for good: the test, not the clock, decides how far the
// defragment has got.
type gatedCopies struct {
	*sim.Backend
	started chan struct{} // a copy began: the defragment holds the device
	release chan struct{} // lets the copy that began go on
	open    chan struct{} // closed: copies no longer wait
}

func (b *gatedCopies) Copy(ctx context.Context, dst, src device.Location, n int64) error {
	select {
	case b.started <- struct{}{}:
		select {
		case <-b.release:
		case <-b.open:
		case <-ctx.Done():
			return ctx.Err()
		}
	case <-b.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.Backend.Copy(ctx, dst, src, n)
}

// readWaitsForTheDevice reports whether a goroutine that test started is
// blocked on a device's lock inside a read (act's read, which takes the
// lock before it builds a status), as the runtime's goroutine stacks say.
// A rename of read or of the test makes it say no, so the test waits
// for its deadline and fails: it cannot pass for it.
func readWaitsForTheDevice(test string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[sync.Mutex.Lock") && strings.Contains(g, "(*Worker).read(") && strings.Contains(g, "created by github.com/memworker/memworker/worker."+test) {
			return true
		}
	}
	return false
}

// TestDefragmentLetsOtherRequestsThrough: a defragment of segments of
// their own (virtual memory off) copies a segment at a time and lets the
// device's other requests in between, so a status asked while it copies is
// answered before it ends.
//
// Nothing here depends on how long anything takes (it used to sleep into
// the first of a dozen 20 ms copies and count on the status being answered
// within the ~240 ms left): each copy waits for the test (gatedCopies), the
// status is asked while the first copy waits, a copy goes on only while
// the status waits for the device, and the status must be answered while
// one of the defragment's copies waits, so before it ended. A defragment
// that held the device throughout would answer it only after its last
// copy.
func TestDefragmentLetsOtherRequestsThrough(t *testing.T) {
	b := &gatedCopies{started: make(chan struct{}), release: make(chan struct{}), open: make(chan struct{})}
	w, _ := testWorker(t, "defrag", func(c *Config) {
		host := sim.Default(1, 1<<30)
		host.DisableVMM = true
		b.Backend = sim.New(host)
		c.Backend = b
	})
	openGate := sync.OnceFunc(func() { close(b.open) })
	defer openGate()
	var ids []string
	for range 64 {
		g := w.gpus[0]
		g.mu.Lock()
		data, err := w.ops()[subjects.Allocate](t.Context(), g, ledger.Call{Now: time.Now()}, []byte(`{"size_bytes":524288}`))
		g.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, data.(subjects.Allocation).AllocationID)
	}
	for i, id := range ids {
		if i%4 != 0 {
			if err := actOn(t, w, subjects.Deallocate, fmt.Sprintf(`{"data":{"allocation_id":%q}}`, id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	env, err := subjects.DecodeRequest([]byte(`{}`), subjects.Defragment)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.act(t.Context(), subjects.Defragment, w.gpus[0], &testRequest{}, env, w.ops()[subjects.Defragment], newReplyWriter())
		done <- err
	}()
	deadline := time.After(30 * time.Second) // for all of it: only a hang takes this long
	select {
	case <-b.started: // into its first copy, holding the device
	case err := <-done:
		t.Fatalf("the defragment ended without copying (%v): nothing to let a status in between", err)
	case <-deadline:
		t.Fatal("the defragment never copied")
	}
	status := make(chan error, 1)
	go func() { status <- actOn(t, w, subjects.GetUsage, `{}`) }()
	// While a copy waits, the defragment holds the device: a status
	// answered then was answered before the defragment ended. A copy goes
	// on only while the status waits for the device (and the defragment
	// has not let it in); once the status has had the device, the next
	// copy waits until its reply is built, however long that takes.
	copies, waited := 1, false
	for answered := false; !answered; {
		select {
		case err := <-status:
			if err != nil {
				t.Fatal(err)
			}
			answered = true
			continue
		case <-deadline:
			t.Fatalf("the status was not answered while the defragment's copy %d waited", copies)
		case <-time.After(time.Millisecond):
		}
		if !readWaitsForTheDevice("TestDefragmentLetsOtherRequestsThrough") {
			continue // not at the device yet, or past it: the copy waits
		}
		if !waited {
			// Go's mutex hands itself to a waiter that has waited over
			// 1 ms at its next unlock, so one of the defragment's next
			// yields lets the status in, whoever the scheduler favours.
			// (Waiting longer only holds the defragment back: it cannot
			// let a status through a defragment that never lets the
			// device go.)
			waited = true
			time.Sleep(2 * time.Millisecond)
		}
		b.release <- struct{}{} // the copy goes on
		select {
		case <-b.started:
			copies++
		case err := <-done:
			t.Fatalf("the status waited for the whole defragment (%d copies, %v)", copies, err)
		case <-deadline:
			t.Fatal("the defragment's next copy did not come")
		}
	}
	openGate() // the waiting copy and the rest go on
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-deadline:
		t.Fatal("the defragment did not end")
	}
	t.Logf("the status was answered while copy %d waited", copies)
	checkBooks(t, w, b.Backend)
}
