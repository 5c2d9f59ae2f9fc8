package ledger

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/proctree"
)

// truth is one reading of device truth, with the pool's reservation at the
// time, so later changes of the worker's own can be applied to it exactly.
type truth struct {
	at       time.Time
	mi       device.MemInfo
	reserved int64
	// since is when the driver first read these figures (mi, with
	// reserved): readings that find the device as it was keep it, and
	// the replies built from them stay the same (Fresh).
	since time.Time
}

// deviceTruth returns the device's total and free bytes as of now. The
// driver is asked at most once per TruthMaxAge: a reading is a driver round
// trip, the largest cost of a status (docs/performance.md), while a busy
// device serves tens of thousands of requests a second. Between readings
// the worker's own reservations, which it knows exactly, are applied to the
// last one, so an allocation shows at once (and its pressure check sees
// it); other processes' use shows within TruthMaxAge.
func (d *Device) deviceTruth(ctx context.Context, now time.Time, reserved int64) (device.MemInfo, error) {
	t := &d.truth
	if due(t.at, now, d.cfg.TruthMaxAge) {
		mi, err := d.backend.MemInfo(ctx, d.index)
		if err != nil {
			d.forgetTruth(now)
			return mi, err
		}
		d.putTruth(now, mi, reserved)
		return mi, nil
	}
	mi := t.mi
	mi.FreeBytes = min(max(mi.FreeBytes-(reserved-t.reserved), 0), mi.TotalBytes)
	return mi, nil
}

// PutTruth takes mi as the reading of device truth at, when the pool
// reserved reserved bytes (ReservedBytes), unless the reading in force is
// as recent or the device was to be read again after at (a failed
// reading, a release to verify). A reader that keeps truth fresh reads the
// driver without the device's lock and puts what it read, when nothing
// changed the device meanwhile.
func (d *Device) PutTruth(at time.Time, mi device.MemInfo, reserved int64) {
	if (d.truth.at.IsZero() || at.After(d.truth.at)) && at.After(d.truthNotBefore) {
		d.putTruth(at, mi, reserved)
	}
}

// forgetTruth drops the reading of device truth: the next use reads the
// driver, and no reading taken before now is put.
func (d *Device) forgetTruth(now time.Time) {
	d.truth, d.truthNotBefore = truth{}, now
}

// TruthDue reports whether the reading of device truth in force is due at
// at (a reader asks of the moment of its next cycle).
func (d *Device) TruthDue(at time.Time) bool { return due(d.truth.at, at, d.cfg.TruthMaxAge) }

// putTruth takes mi as the reading at, when the pool reserved reserved.
func (d *Device) putTruth(at time.Time, mi device.MemInfo, reserved int64) {
	t := &d.truth
	since := at
	if !t.at.IsZero() && t.mi == mi && t.reserved == reserved {
		since = t.since
	}
	*t = truth{at: at, mi: mi, reserved: reserved, since: since}
}

// ReservedBytes is the VRAM pool's reservation now: what a reading of
// device truth taken now is put with (PutTruth).
func (d *Device) ReservedBytes() int64 { return d.pools[device.VRAM].Stats().ReservedBytes }

// Readings names what replies built at a moment take from the device
// beside its ledger: device truth's figures, the telemetry reading, and
// the pressure trend they showed. A reply built from them can be sent
// again while a reply built anew would find the same (Fresh) and nothing
// else changed.
type Readings struct {
	truth time.Time  // the figures' since
	tele  *time.Time // each reading has its own
	trend string
}

// Readings returns the readings of a reply built now.
func (d *Device) Readings() Readings {
	return Readings{truth: d.truth.since, tele: d.tele.at, trend: d.pressure.Trend()}
}

// ReadDue takes a reading of device truth when one is due at now, as a
// reply built then would: a reading that finds the figures as they were
// keeps replies built from them fresh (an idle device's replies are built
// once, not once per TruthMaxAge).
func (d *Device) ReadDue(ctx context.Context, now time.Time) error {
	_, err := d.deviceTruth(ctx, now, d.ReservedBytes())
	return err
}

// Fresh reports whether a reply built at now would find r again: device
// truth's figures as they were and not due (ReadDue first), and the
// pressure trend not moved since (the ratio's average drifts towards the
// ratio). Telemetry counts when the reply shows it (withTelemetry), and
// for every reply while reservations need it (reservationUnused): it must
// be the same reading, not due.
func (d *Device) Fresh(r Readings, now time.Time, withTelemetry bool) bool {
	if d.TruthDue(now) || !r.truth.Equal(d.truth.since) || d.pressure.TrendAt(now) != r.trend {
		return false
	}
	if _, ok := d.backend.(ProcessLister); !ok || (!withTelemetry && d.byType[reservationCode] == 0) {
		return true
	}
	return r.tele != nil && r.tele == d.tele.at && !due(*r.tele, now, d.cfg.TelemetryMaxAge)
}

// due reports whether a reading taken at is to be taken again at now:
// there is none, it is maxAge old, or the clock went back.
func due(at, now time.Time, maxAge time.Duration) bool {
	return at.IsZero() || now.Before(at) || now.Sub(at) >= maxAge
}

// telemetry is one reading of a device's processes and driver reservation.
// Its slice and time are never changed once read: replies share them.
type telemetry struct {
	at    *time.Time
	procs []subjects.ProcessUsage
	// owner[i] is the reservation's process that procs[i] counts for as
	// its child (Config.ParentOf); 0 for none.
	owner    []int
	reserved int64
	ok       bool
}

// AddTelemetry adds what the backend's telemetry knows (NVML: processes,
// driver reservations) to u, read at most once per TelemetryMaxAge. It is
// only for replies: a reading costs far more than the rest of a status, too
// much for every request.
func (d *Device) AddTelemetry(ctx context.Context, u *subjects.Usage) {
	t := d.readTelemetry(ctx, u.SampledAt)
	if t == nil || !t.ok {
		return
	}
	u.DriverReservedBytes, u.Processes, u.ProcessesSampledAt = t.reserved, t.procs, t.at
}

// readTelemetry returns the telemetry as of now, read again when older
// than TelemetryMaxAge; nil when the backend has none.
func (d *Device) readTelemetry(ctx context.Context, now time.Time) *telemetry {
	return d.readTelemetryWithin(ctx, now, d.cfg.TelemetryMaxAge)
}

// readTelemetryWithin is readTelemetry with a reading at most maxAge old.
func (d *Device) readTelemetryWithin(ctx context.Context, now time.Time, maxAge time.Duration) *telemetry {
	pl, ok := d.backend.(ProcessLister)
	if !ok {
		return nil
	}
	t := &d.tele
	if t.at == nil || due(*t.at, now, maxAge) {
		procs, reserved, err := pl.Processes(ctx, d.index)
		// A failed reading is kept too, so a broken NVML is not asked on
		// every request; telemetry is extra, usage stands on device truth.
		at := now.UTC() // replies show UTC times, whichever path read it
		*t = telemetry{at: &at, reserved: reserved, ok: err == nil}
		for _, p := range procs {
			t.procs = append(t.procs, subjects.ProcessUsage{PID: p.PID, UsedBytes: p.UsedBytes})
		}
		t.owner = d.parentReservations(t.procs)
	}
	return t
}

// parentReservations says, for each GPU process, the reservation's process it counts
// for as a child: its nearest ancestor that a reservation names. A process
// a reservation names is its own; the walk stops at the processes every
// process shares (pid 1, the worker and the processes above it), so a
// reservation naming one of those is not given everybody's memory.
func (d *Device) parentReservations(procs []subjects.ProcessUsage) []int {
	if d.cfg.ParentOf == nil || d.byType[reservationCode] == 0 || len(procs) == 0 {
		return nil
	}
	named := map[int]bool{}
	for _, a := range d.allocs {
		if a.reservation() && a.pid() != 0 {
			named[a.pid()] = true
		}
	}
	shared := map[int]bool{1: true, os.Getpid(): true}
	for _, p := range proctree.Ancestors(os.Getpid(), d.cfg.ParentOf) {
		shared[p] = true
	}
	owner := make([]int, len(procs))
	for i, p := range procs {
		if named[p.PID] {
			continue // its own, counted by its pid
		}
		for _, a := range proctree.Ancestors(p.PID, d.cfg.ParentOf) {
			if shared[a] {
				break
			}
			if named[a] {
				owner[i] = a
				break
			}
		}
	}
	return owner
}

// observed is what process pid and the processes it started used of the
// device at the last telemetry reading, and when that was; ok is false
// without a pid or telemetry.
func (d *Device) observed(pid int) (int64, *time.Time, bool) {
	t := &d.tele
	if pid == 0 || t.at == nil || !t.ok {
		return 0, nil, false
	}
	var used int64
	for i, p := range t.procs {
		if p.PID == pid || (i < len(t.owner) && t.owner[i] == pid) {
			used += p.UsedBytes
		}
	}
	return used, t.at, true
}

// reservationUnused is what reservations hold that their processes do not
// use yet: the sum of max(0, size - observed). Telemetry is read again when
// stale, and only when there are reservations.
func (d *Device) reservationUnused(ctx context.Context, now time.Time) int64 {
	if d.byType[reservationCode] == 0 {
		return 0
	}
	d.readTelemetry(ctx, now)
	var unused int64
	for _, a := range d.allocs {
		if a.reservation() {
			obs, _, _ := d.observed(a.pid())
			unused += max(0, a.size-obs)
		}
	}
	return unused
}

// Exceeding lists, once per crossing, the reservations whose process now
// uses more than it reserved (for an event); a reservation back under its
// size may be listed again when it next crosses. A holder giving memory
// back is not: its reservation shrinks before its process lets go, and the
// handoff verifies it (a release that fails leaves it held again, and
// listed if its process still uses more).
func (d *Device) Exceeding() []subjects.Allocation {
	if d.byType[reservationCode] == 0 {
		return nil
	}
	var out []subjects.Allocation
	for _, a := range d.allocs {
		if !a.reservation() {
			continue
		}
		if h := a.holding(); h != nil && h.state == subjects.HolderReleasing {
			continue // shrunk before its process let go: the release is being verified
		}
		obs, _, ok := d.observed(a.pid())
		over := ok && obs > a.size
		if over && !a.has(exceeded) {
			out = append(out, d.view(a))
		}
		a.set(exceeded, over)
	}
	return out
}

// otherGrowth is how much other processes' use must grow between readings
// for the cache to go back at once (below it: the driver's own jitter).
const otherGrowth = 64 << 20

// Reading is the device as of a moment, and what reading it did.
type Reading struct {
	Usage subjects.Usage
	// Released is what auto-release returned to the device.
	Released int64
	// Exceeding are the reservations that newly passed their size.
	Exceeding []subjects.Allocation
	// ReleaseErr is a failure of auto-release (the reading stands).
	ReleaseErr error
}

// Read reads the device's usage as of now. When auto-release is on and
// device truth is at or past the warning threshold (another process grew,
// say), it first returns the pool's empty cached segments to the device, so
// the GPU's other users can have them.
func (d *Device) Read(ctx context.Context, now time.Time) (Reading, error) {
	u, err := d.Usage(ctx, now)
	r := Reading{Usage: u, Exceeding: d.Exceeding()}
	if err != nil {
		return r, err
	}
	// Another process growing wants the memory now: the cache beyond
	// CacheKeep goes back without waiting out the hold.
	grew := d.lastOther >= 0 && u.OtherBytes > d.lastOther+otherGrowth
	if grew || u.OtherBytes < d.lastOther || d.lastOther < 0 {
		d.lastOther = u.OtherBytes // a slow creep past otherGrowth counts too
	}
	if grew {
		if r.Released, r.ReleaseErr = d.returnCacheAfter(ctx, now, 0); r.Released > 0 {
			r.Usage, err = d.Usage(ctx, now)
			u = r.Usage
		}
	}
	if err != nil || !d.cfg.AutoRelease || u.UsageRatio < d.cfg.Thresholds.Warning || u.CachedBytes == 0 {
		return r, err
	}
	released, rerr := d.release(ctx)
	r.Released, r.ReleaseErr = r.Released+released, errors.Join(r.ReleaseErr, rerr)
	if released == 0 {
		return r, nil
	}
	r.Usage, err = d.Usage(ctx, now)
	return r, err
}
