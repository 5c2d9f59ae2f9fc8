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
// those without it (the reader). With a gate, a reading without the lock
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

// TestTheReaderKeepsTruthFreshWhileRequestsCome: while a client polls, the
// device's reading of device truth is taken by its reader, ahead of time
// and without the device's lock, not by the requests that would find it
// due; once the polling stops the reader sleeps.
func TestTheReaderKeepsTruthFreshWhileRequestsCome(t *testing.T) {
	const maxAge = 100 * time.Millisecond
	b, w, ask := servingReadings(t, maxAge, false)
	for deadline := time.Now().Add(10 * time.Second); b.free.Load() < 8; {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s of polling the reader took %d readings, requests %d", b.free.Load(), b.locked.Load())
		}
		ask(subjects.GetStatus, `{}`)
		time.Sleep(time.Millisecond)
	}
	if locked, free := b.locked.Load(), b.free.Load(); locked > 1+free/4 {
		t.Errorf("requests took %d readings, the reader %d: the reader does not keep ahead of them", locked, free)
	}
	// It sleeps a cycle after the last request (however late a busy
	// machine runs that cycle), then reads no more.
	for deadline := time.Now().Add(10 * time.Second); !w.gpus[0].truth.idle.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("10 s after the last request the truth reader is still awake")
		}
	}
	before := b.free.Load()
	time.Sleep(3 * maxAge)
	if after := b.free.Load(); after != before {
		t.Errorf("with no request the reader took %d readings in %v", after-before, 3*maxAge)
	}
	// While mutations change the device, a reading of the reader's would
	// be void: it does not ask.
	before = b.free.Load()
	for end := time.Now().Add(5 * maxAge); time.Now().Before(end); {
		ask(subjects.Clear, `{"data":{"force":true}}`)
		time.Sleep(time.Millisecond)
	}
	if after := b.free.Load(); after > before+1 { // the cycle it was woken in
		t.Errorf("while mutations came the reader took %d readings in %v", after-before, 5*maxAge)
	}
}

// TestTheReaderDropsAReadingTheDeviceChangedUnder: a reading the reader
// took while an allocation changed the device is not put: paired with the
// reservation from before, it would count the allocation twice.
func TestTheReaderDropsAReadingTheDeviceChangedUnder(t *testing.T) {
	const maxAge = 2 * time.Second
	b, w, ask := servingReadings(t, maxAge, true)
	// Requests come until the reader asks the driver (three quarters of
	// the max age after the first request's own reading).
	for deadline := time.Now().Add(10 * time.Second); ; {
		ask(subjects.GetStatus, `{}`)
		select {
		case <-b.inDriver:
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("the reader took no reading in 10 s")
			}
			continue
		}
		break
	}
	ask(subjects.Allocate, `{"data":{"size_bytes":67108864}}`)
	b.g.Store(nil)       // no more gating
	b.gate <- struct{}{} // it reads the device with the allocation in
	// Until the reading before falls due, the usage is the one
	// the reader put or the one from before.
	usage := usageOf(t, w)
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if u := usage(); u.ReservedBytes == 0 || u.FreeBytes != u.TotalBytes-u.ReservedBytes {
			t.Fatalf("free %d of %d with %d reserved: want %d", u.FreeBytes, u.TotalBytes, u.ReservedBytes, u.TotalBytes-u.ReservedBytes)
		}
	}
}

// TestTheReaderSleepsWhenOnlyTheMonitorReads: the monitor's sampling (here
// more often than the reader's cycle) uses device truth too, but nobody
// waits on it: once requests stop the reader sleeps.
func TestTheReaderSleepsWhenOnlyTheMonitorReads(t *testing.T) {
	nc, w := serving(t, func(c *Config) {
		c.TruthMaxAge, c.TelemetryMaxAge, c.SampleInterval = 100*time.Millisecond, time.Hour, 20*time.Millisecond
	})
	if r := ask(t, nc, subjects.GetStatus, `{}`, nil); !r.Success {
		t.Fatal(r.ErrorMessage)
	}
	for deadline := time.Now().Add(10 * time.Second); !w.gpus[0].truth.idle.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("10 s after the only request the truth reader is still awake")
		}
	}
}

// TestTheReadersCycle: a reader's cycle is three quarters of the max age,
// whatever it is, and no reader runs where requests read the driver
// nearly every time.
func TestTheReadersCycle(t *testing.T) {
	for _, tc := range []struct {
		maxAge, every time.Duration
		runs          bool
	}{
		{time.Nanosecond, time.Nanosecond, false},
		{100 * time.Microsecond, 75 * time.Microsecond, false},
		{time.Millisecond, 750 * time.Microsecond, true},
		{time.Second, 750 * time.Millisecond, true},
		{1_000_000 * time.Hour, 750_000 * time.Hour, true},
	} {
		if every, runs := truthReaderCycle(tc.maxAge); every != tc.every || runs != tc.runs {
			t.Errorf("max age %v: cycle %v, runs %v; want %v, %v", tc.maxAge, every, runs, tc.every, tc.runs)
		}
	}
}
