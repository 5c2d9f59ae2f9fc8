package ledger_test

import (
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// TestReadingsStayFreshWhileTheDeviceIsAsItWas: a reply built from the
// device's readings may be sent again at a later moment while a reply
// built then would find the same: a due reading of device truth is taken,
// and one that finds the figures as they were keeps the readings fresh;
// one that finds other figures ends them, even when a later reading finds
// the first figures again; the pressure trend moving with time alone ends
// them too.
func TestReadingsStayFreshWhileTheDeviceIsAsItWas(t *testing.T) {
	d, b := newDevice(t, 4*gib, func(c *ledger.Config) { c.TruthMaxAge = time.Millisecond })
	t0 := time.Now().UTC()
	observe := func(now time.Time) subjects.Pressure {
		t.Helper()
		u, err := d.Usage(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := d.Observe(u)
		return p
	}
	observe(t0)
	if _, _, err := d.Allocate(ctx, ledger.Call{Now: t0}, valid(t, &subjects.AllocateRequest{SizeBytes: 2 * gib})); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(10 * time.Millisecond)
	if p := observe(at); p.Trend != subjects.TrendRising {
		t.Fatalf("after the allocation the trend is %s, want rising", p.Trend)
	}
	r := d.Readings()
	fresh := func(r ledger.Readings, now time.Time) bool {
		return d.ReadDue(ctx, now) == nil && d.Fresh(r, now, false)
	}
	later := at.Add(5 * time.Millisecond) // a reading is due
	if !fresh(r, later) {
		t.Fatal("a reading that finds the device as it was: not fresh")
	}
	if fresh(r, at.Add(10*time.Minute)) {
		t.Error("ten minutes on, the trend has turned steady: still fresh")
	}
	b.SetExternalUsage(0, 64*mib)
	if fresh(r, later.Add(5*time.Millisecond)) {
		t.Error("a reading that finds another process's memory: still fresh")
	}
	b.SetExternalUsage(0, 0)
	if fresh(r, later.Add(10*time.Millisecond)) {
		t.Error("the first figures found again after others: still fresh")
	}
	b.SetUnavailable(0, true)
	failed := later.Add(15 * time.Millisecond)
	if fresh(d.Readings(), failed) {
		t.Error("a device that cannot be read: fresh")
	}
	// A reading a reader took before the failure is not put after it.
	d.PutTruth(failed.Add(-time.Microsecond), device.MemInfo{TotalBytes: 4 * gib, FreeBytes: 4 * gib}, d.ReservedBytes())
	if !d.TruthDue(failed.Add(time.Microsecond)) {
		t.Error("a reading from before a failed one was put")
	}
	d.PutTruth(failed.Add(time.Microsecond), device.MemInfo{TotalBytes: 4 * gib, FreeBytes: 4 * gib}, d.ReservedBytes())
	if d.TruthDue(failed.Add(time.Microsecond)) {
		t.Error("a reading from after the failed one was not put")
	}
}
