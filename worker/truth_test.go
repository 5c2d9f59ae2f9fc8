package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

// readingsBackend is a sim backend that counts the driver's readings of
// device truth: those asked for while the device's lock is held (by a
// request that found the reading due, or anything else holding it) and
// those without it (a read's, after its reply). With a gate, a reading without the lock
// waits for the gate to let it go, then reads the device as it is then.
type readingsBackend struct {
	*sim.Backend
	g              atomic.Pointer[gpu]
	locked, free   atomic.Int64
	all            atomic.Int64 // with g unset too
	gate, inDriver chan struct{}
}

func (b *readingsBackend) MemInfo(ctx context.Context, dev int) (device.MemInfo, error) {
	b.all.Add(1)
	if g := b.g.Load(); g != nil {
		if !g.mu.TryLock() {
			b.locked.Add(1)
		} else {
			g.mu.unlockRead()
			b.free.Add(1)
			if b.gate != nil {
				b.inDriver <- struct{}{}
				<-b.gate
			}
		}
	}
	return b.Backend.MemInfo(ctx, dev)
}

func servingReadings(t *testing.T, maxAge time.Duration, gated bool) (*readingsBackend, *Worker, func(subjects.Op, string)) {
	t.Helper()
	b := &readingsBackend{Backend: sim.New(sim.Default(1, 1<<30))}
	if gated {
		b.gate, b.inDriver = make(chan struct{}), make(chan struct{})
	}
	nc, w := serving(t, func(c *Config) {
		c.Backend = b
		c.TruthMaxAge, c.TelemetryMaxAge, c.SampleInterval = maxAge, time.Hour, time.Hour
	})
	b.g.Store(w.gpus[0])
	return b, w, func(op subjects.Op, body string) {
		t.Helper()
		if r := ask(t, nc, op, body, nil); !r.Success {
			t.Fatalf("%s: %s %s", op, r.ErrorCode, r.ErrorMessage)
		}
	}
}

// TestReadsTakeTheNextReadingAfterTheirReplies: while a client polls, the
// device's reading of device truth is taken after a read's reply, ahead of
// time and without the device's lock, not by the requests that would find
// it due; with no request none is taken, and none while mutations come.
func TestReadsTakeTheNextReadingAfterTheirReplies(t *testing.T) {
	const maxAge = 100 * time.Millisecond
	b, _, ask := servingReadings(t, maxAge, false)
	for deadline := time.Now().Add(10 * time.Second); b.free.Load() < 8; {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s of polling reads took %d readings ahead, requests %d as they found them due", b.free.Load(), b.locked.Load())
		}
		ask(subjects.GetStatus, `{}`)
		time.Sleep(time.Millisecond)
	}
	if locked, free := b.locked.Load(), b.free.Load(); locked > 1+free/4 {
		t.Errorf("requests took %d readings as they found them due, reads %d ahead: reading ahead does not keep ahead of them", locked, free)
	}
	// Nothing reads ahead of its own accord: with no request, no reading
	// (the last read's may still come).
	before := b.free.Load()
	time.Sleep(3 * maxAge)
	if after := b.free.Load(); after > before+1 {
		t.Errorf("with no request %d readings were taken in %v", after-before, 3*maxAge)
	}
	// A mutation's reply is not followed by a reading: its own readings
	// are taken when due, and a reading ahead of them would be void.
	before = b.free.Load()
	for end := time.Now().Add(5 * maxAge); time.Now().Before(end); {
		ask(subjects.Clear, `{"data":{"force":true}}`)
		time.Sleep(time.Millisecond)
	}
	if after := b.free.Load(); after > before+1 { // the last read's
		t.Errorf("while mutations came %d readings were taken ahead in %v", after-before, 5*maxAge)
	}
}

// TestAReadingAheadTheDeviceChangedUnderIsDropped: a reading taken after a
// read's reply, while an allocation changed the device, is not put: paired
// with the reservation from the read's moment, it would count the
// allocation twice.
func TestAReadingAheadTheDeviceChangedUnderIsDropped(t *testing.T) {
	const maxAge = 2 * time.Second
	b, w, ask := servingReadings(t, maxAge, true)
	// Reads come until one asks the driver after its reply (three
	// quarters of the max age after the first request's own reading).
	for deadline := time.Now().Add(10 * time.Second); ; {
		ask(subjects.GetStatus, `{}`)
		select {
		case <-b.inDriver:
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no reading was taken ahead in 10 s")
			}
			continue
		}
		break
	}
	ask(subjects.Allocate, `{"data":{"size_bytes":67108864}}`)
	b.g.Store(nil)       // no more gating
	b.gate <- struct{}{} // it reads the device with the allocation in
	// Until the reading before falls due, the usage is the one
	// put ahead or the one from before.
	usage := usageOf(t, w)
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if u := usage(); u.ReservedBytes == 0 || u.FreeBytes != u.TotalBytes-u.ReservedBytes {
			t.Fatalf("free %d of %d with %d reserved: want %d", u.FreeBytes, u.TotalBytes, u.ReservedBytes, u.TotalBytes-u.ReservedBytes)
		}
	}
}

// TestTheAheadHorizon: a read takes the next reading when the one in force
// falls due within a quarter of the max age, whatever it is, and none is
// taken ahead where requests read the driver nearly every time.
func TestTheAheadHorizon(t *testing.T) {
	for _, tc := range []struct {
		maxAge, horizon time.Duration
		ahead           bool
	}{
		{time.Nanosecond, 0, false},
		{100 * time.Microsecond, 25 * time.Microsecond, false},
		{time.Millisecond, 250 * time.Microsecond, true},
		{time.Second, 250 * time.Millisecond, true},
		{1_000_000 * time.Hour, 250_000 * time.Hour, true},
	} {
		if horizon, ahead := aheadHorizon(tc.maxAge); horizon != tc.horizon || ahead != tc.ahead {
			t.Errorf("max age %v: horizon %v, ahead %v; want %v, %v", tc.maxAge, horizon, ahead, tc.horizon, tc.ahead)
		}
	}
}
