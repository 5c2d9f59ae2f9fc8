// Package transfer runs transfers: copies of an allocation's bytes between
// devices of a host, or between a device and host memory, as jobs. A
// Manager keeps the jobs (queued, running, and finished ones for a while),
// runs them on a few runners, copies in chunks so progress moves, and
// verifies a copy with CRC-32C while the next chunks copy.
//
// A job works on the ledgers of the devices involved in three steps, each
// through Device.Do (which serialises it with the device's requests), with
// the copy itself between them holding no device: the source was lent
// (ledger.Device.Lend) before the job was submitted; the runner receives
// the destination (ledger.Device.Receive, through the ledger's door), copies,
// then settles both.
package transfer

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// Tuning.
const (
	// DefaultChunk is the bytes per backend copy, so progress moves, and
	// the bytes read at a time for checksums.
	DefaultChunk = 64 << 20
	// QueueLen is how many jobs may wait for a runner; a tenant may have a
	// quarter of them queued or running.
	QueueLen = 1024
	// Runners is how many jobs run at once.
	Runners = 4
)

// Device is one device as a job needs it: its id, and its ledger, reached
// only through Do, which runs f serialised with the device's other
// requests (and lets the owner look at the device after).
type Device interface {
	ID() string
	Do(f func(*ledger.Device))
}

// Backend is the memory a job copies and reads.
type Backend interface {
	Copy(ctx context.Context, dst, src device.Location, n int64) error
	Read(ctx context.Context, at device.Location, p []byte) error
}

// Config is what a Manager needs.
type Config struct {
	Backend Backend
	// Chunk is the bytes per backend copy and per checksum read (0:
	// DefaultChunk).
	Chunk int64
	// Retention is how long a finished job is known; HistoryBytes bounds
	// the memory those take (about 1 KiB each; the oldest go first).
	Retention    time.Duration
	HistoryBytes int64
	// Code maps an error to its wire code and message, for a failed job's
	// status.
	Code func(error) (subjects.Code, string)
	// Done is told of every finished job (metrics).
	Done func(s subjects.TransferStatus)
	// DoorChanged returns a channel closed the next time the ledger's
	// door (ledger.Gate) opens or closes for good, for a job whose
	// destination the door refused for now (nil: no signal); such a job
	// also asks again every DoorRetry (0: a second), for an opening the
	// signal cannot tell (a renewal stored in the instant after the
	// refusal).
	DoorChanged func() <-chan struct{}
	DoorRetry   time.Duration
	Log         *slog.Logger
}

// Manager keeps and runs the jobs. Build it with New, run it with Run.
type Manager struct {
	cfg   Config
	queue chan *job

	mu        sync.Mutex
	jobs      map[string]*job
	done      list.List // of *finished, oldest first
	doneBytes int64
	byTenant  map[string]int // jobs queued or running, by tenant
}

// New returns a manager with no jobs.
func New(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Chunk <= 0 {
		cfg.Chunk = DefaultChunk
	}
	return &Manager{cfg: cfg, queue: make(chan *job, QueueLen), jobs: map[string]*job{}, byTenant: map[string]int{}}
}

// job is one transfer. Its status is guarded by mu; bytesDone is read
// without it for progress.
type job struct {
	mu        sync.Mutex
	status    subjects.TransferStatus
	bytesDone atomic.Int64

	src, dst Device
	lent     ledger.Lent
	verify   bool
	tenant   string // whose transfer it is ("" the operator's)

	copyStart time.Time // guarded by mu: when the copy phase began
	copyEnded bool      // guarded by mu: status.CopySeconds is final
}

// snapshot returns the job's status with progress filled in.
func (j *job) snapshot(now time.Time) subjects.TransferStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.status
	s.BytesDone = j.bytesDone.Load()
	if s.StartedAt != nil {
		end := now
		if s.CompletedAt != nil {
			end = *s.CompletedAt
		}
		// End to end: from the request (queueing, setup, copy, verify).
		if secs := end.Sub(s.CreatedAt).Seconds(); secs > 0 {
			s.ThroughputBytesPerSecond = float64(s.BytesDone) / secs
		}
	}
	if !j.copyStart.IsZero() && !j.copyEnded {
		s.CopySeconds = now.Sub(j.copyStart).Seconds()
	}
	if s.CopySeconds > 0 {
		s.CopyThroughputBytesPerSecond = float64(s.BytesDone) / s.CopySeconds
	}
	return s
}

func (j *job) update(f func(*subjects.TransferStatus)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	f(&j.status)
}

// Request is a transfer to submit: the source, lent to it, and where it
// goes.
type Request struct {
	Src, Dst Device
	Lent     ledger.Lent
	Type     subjects.AllocationType
	Mode     string
	Verify   bool
	Call     ledger.Call
}

// Submit queues a transfer and returns its status, queued. The caller
// returns the loan when it fails: a queue full (for everyone, or for the
// tenant) is ledger.ErrOverloaded.
func (m *Manager) Submit(r Request) (subjects.TransferStatus, error) {
	tenant := r.Call.Who.Tenant
	j := &job{
		src: r.Src, dst: r.Dst, lent: r.Lent, verify: r.Verify, tenant: tenant,
		status: subjects.TransferStatus{
			TransferID:           uuid.NewString(),
			Status:               subjects.TransferQueued,
			Mode:                 r.Mode,
			SourceDeviceID:       r.Src.ID(),
			SourceAllocationID:   r.Lent.Allocation.AllocationID,
			TargetDeviceID:       r.Dst.ID(),
			TargetAllocationType: r.Type,
			BytesTotal:           r.Lent.Allocation.SizeBytes,
			CreatedAt:            r.Call.Now.UTC(),
		},
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := m.byTenant[tenant]; tenant != "" && n >= QueueLen/4 {
		return subjects.TransferStatus{}, fmt.Errorf("tenant %s has %d transfers queued or running, the most a tenant may: %w", tenant, n, ledger.ErrOverloaded)
	}
	select {
	case m.queue <- j:
	default:
		return subjects.TransferStatus{}, fmt.Errorf("%d transfers are queued: %w", QueueLen, ledger.ErrOverloaded)
	}
	m.byTenant[tenant]++
	m.jobs[j.status.TransferID] = j
	return j.snapshot(r.Call.Now), nil
}

// Get returns the status of transfer id, when it is from or to device
// dev and who may see it.
func (m *Manager) Get(id, dev string, who ledger.Who, now time.Time) (subjects.TransferStatus, bool) {
	m.mu.Lock()
	m.prune(now)
	j := m.jobs[id]
	m.mu.Unlock()
	if j == nil || (j.src.ID() != dev && j.dst.ID() != dev) || (!who.Operator() && j.tenant != who.Tenant) {
		return subjects.TransferStatus{}, false
	}
	return j.snapshot(now), true
}

// finished is a finished job in the history.
type finished struct {
	id    string
	at    time.Time
	bytes int64
}

// jobBytes is what a finished job is counted as: its status and the map
// and list entries around it, and its error message.
func jobBytes(s subjects.TransferStatus) int64 { return 1024 + int64(len(s.ErrorMessage)) }

// ended enters a job that ended into the history. The caller holds m.mu.
func (m *Manager) ended(j *job, s subjects.TransferStatus, now time.Time) {
	if m.byTenant[j.tenant]--; m.byTenant[j.tenant] <= 0 {
		delete(m.byTenant, j.tenant)
	}
	f := &finished{id: s.TransferID, at: now, bytes: jobBytes(s)}
	m.done.PushBack(f)
	m.doneBytes += f.bytes
	m.prune(now)
}

// prune forgets the finished jobs past the retention or the byte bound.
// The caller holds m.mu.
func (m *Manager) prune(now time.Time) {
	for e := m.done.Front(); e != nil; e = m.done.Front() {
		f := e.Value.(*finished)
		if now.Sub(f.at) < m.cfg.Retention && m.doneBytes <= m.cfg.HistoryBytes {
			return
		}
		m.done.Remove(e)
		m.doneBytes -= f.bytes
		delete(m.jobs, f.id)
	}
}

// Run runs queued jobs on Runners runners with ctx until stop is closed,
// and then the jobs still queued, so none is left queued. It returns when
// the last has run.
func (m *Manager) Run(ctx context.Context, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for range Runners {
		wg.Go(func() {
			for {
				select {
				case j := <-m.queue:
					m.run(ctx, j)
				case <-stop:
					for {
						select {
						case j := <-m.queue:
							m.run(ctx, j)
						default:
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
}

func (m *Manager) run(ctx context.Context, j *job) {
	started := time.Now().UTC()
	j.update(func(s *subjects.TransferStatus) { s.Status, s.StartedAt = subjects.TransferRunning, &started })

	// Receive the destination through the door, counted as the source's:
	// while the door is shut for a moment (the node's lease unconfirmed),
	// the transfer waits for it to open, at most pausedWait, as an
	// allocate with wait_seconds does.
	shut := time.NewTimer(pausedWait)
	defer shut.Stop()
	var destID string
	var dst device.Location
	var err error
	for {
		changed := m.doorChanged() // before asking: a change in between is not missed
		j.dst.Do(func(d *ledger.Device) {
			destID, dst, err = d.Receive(ctx, ledger.Call{Who: ledger.Who{Tenant: j.tenant}, Now: time.Now().UTC()}, j.lent, j.status.TargetAllocationType)
		})
		if !errors.Is(err, ledger.ErrPaused) || !m.waitDoor(ctx, changed, shut.C) {
			break
		}
	}
	if err != nil {
		m.finish(j, "", err)
		return
	}
	copyStart := time.Now().UTC()
	j.update(func(s *subjects.TransferStatus) {
		s.DestinationAllocationID = destID
		s.SetupSeconds = copyStart.Sub(started).Seconds()
		j.copyStart = copyStart
	})
	// Copy without holding either device: both allocations are busy, so
	// nothing moves or frees them.
	m.finish(j, destID, m.copy(ctx, j, dst))
}

// A transfer whose destination the door refuses for now (ErrPaused) asks
// again when the door changes (Config.DoorChanged) or after DoorRetry, for
// at most pausedWait.
const (
	doorRetry  = time.Second // unless Config.DoorRetry
	pausedWait = 30 * time.Second
)

// doorChanged is a channel closed when the door changes; nil (never
// closed) without Config.DoorChanged.
func (m *Manager) doorChanged() <-chan struct{} {
	if m.cfg.DoorChanged != nil {
		return m.cfg.DoorChanged()
	}
	return nil
}

// waitDoor waits for changed (or the retry), and reports false if shut
// fired or ctx ended first.
func (m *Manager) waitDoor(ctx context.Context, changed <-chan struct{}, shut <-chan time.Time) bool {
	t := time.NewTimer(cmp.Or(m.cfg.DoorRetry, doorRetry))
	defer t.Stop()
	select {
	case <-changed:
		return true
	case <-t.C:
		return true
	case <-shut:
		return false
	case <-ctx.Done():
		return false
	}
}

// copy copies the allocation a chunk at a time, so progress moves, and
// with verify checksums each chunk while the next one copies.
func (m *Manager) copy(ctx context.Context, j *job, dst device.Location) error {
	var v *verifier
	if j.verify {
		v = m.startVerifier(ctx, j.lent.Loc, dst, j.lent.Allocation.SizeBytes)
	}
	var landed int64
	err := m.copyInChunks(ctx, dst, j.lent.Loc, j.lent.Allocation.SizeBytes, func(n int64) {
		j.bytesDone.Add(n)
		if v != nil {
			v.add(span{landed, n})
		}
		landed += n
	})
	copyEnd := time.Now().UTC()
	j.update(func(s *subjects.TransferStatus) {
		s.CopySeconds = copyEnd.Sub(j.copyStart).Seconds()
		j.copyEnded = true
	})
	if v == nil {
		return err
	}
	sum, verr := v.result()
	if err != nil {
		return err
	}
	j.update(func(s *subjects.TransferStatus) {
		s.VerifySeconds = time.Since(copyEnd).Seconds()
		if verr == nil {
			s.Verified, s.Checksum = true, "crc32c:"+sum
		}
	})
	return verr
}

// copyInChunks copies n bytes a chunk at a time and calls landed with each
// chunk's length, in order, once it is copied.
func (m *Manager) copyInChunks(ctx context.Context, dst, src device.Location, n int64, landed func(int64)) error {
	if cc, ok := m.cfg.Backend.(ledger.ChunkCopier); ok {
		return cc.CopyChunks(ctx, dst, src, n, m.cfg.Chunk, landed)
	}
	for off := int64(0); off < n; off += m.cfg.Chunk {
		k := min(m.cfg.Chunk, n-off)
		s, d := src, dst
		s.Addr += uint64(off)
		d.Addr += uint64(off)
		if err := m.cfg.Backend.Copy(ctx, d, s, k); err != nil {
			return fmt.Errorf("copying bytes %d..%d: %w", off, off+k, err)
		}
		landed(k)
	}
	return nil
}

// finish settles a job: on success, a move frees the source; on failure the
// destination (destID, when there is one) is freed. Either way both
// allocations stop being busy.
func (m *Manager) finish(j *job, destID string, err error) {
	now := time.Now().UTC()
	srcID := j.status.SourceAllocationID
	j.src.Do(func(d *ledger.Device) {
		if serr := d.Settle(srcID, err == nil, err == nil && j.status.Mode == subjects.ModeMove, now); serr != nil && err == nil {
			err = serr
		}
	})
	if destID != "" {
		j.dst.Do(func(d *ledger.Device) {
			if derr := d.Settle(destID, false, err != nil, now); derr != nil {
				m.cfg.Log.Error("settling a transfer's destination", "device", j.dst.ID(), "err", derr)
			}
		})
	}
	var final subjects.TransferStatus
	j.update(func(st *subjects.TransferStatus) {
		st.CompletedAt = &now
		if err == nil {
			st.Status = subjects.TransferCompleted
		} else {
			st.Status = subjects.TransferFailed
			st.ErrorCode, st.ErrorMessage = m.cfg.Code(err)
			st.DestinationAllocationID = ""
		}
		final = *st
	})
	m.mu.Lock()
	m.ended(j, final, now)
	m.mu.Unlock()
	if m.cfg.Done != nil {
		m.cfg.Done(final)
	}
}
