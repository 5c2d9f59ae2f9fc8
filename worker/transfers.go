package worker

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// Transfer tuning.
const (
	transferChunk    = 64 << 20      // bytes per backend copy, so progress moves
	verifyChunk      = transferChunk // bytes read at a time for checksums, summed on several cores (crc.go)
	transferQueueLen = 1024          // jobs waiting for a runner
	transferRunners  = 4             // jobs running at once
)

// job is one transfer. Its status is guarded by mu; bytesDone is read
// without it for progress.
type job struct {
	mu        sync.Mutex
	status    subjects.TransferStatus
	bytesDone atomic.Int64

	src, dst *gpu
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

// transfers is the worker's job registry and queue. Finished jobs are
// kept for get_transfer for the retention, and at most maxBytes of them
// (oldest dropped first); queued and running jobs are always kept.
type transfers struct {
	mu        sync.Mutex
	jobs      map[string]*job
	done      list.List // of *finished, oldest first
	doneBytes int64
	queue     chan *job

	retention time.Duration
	maxBytes  int64
}

// finished is a finished job in the registry's history.
type finished struct {
	id    string
	at    time.Time
	bytes int64
}

// jobBytes is what a finished job is counted as: its status and the map
// and list entries around it, and its error message.
func jobBytes(s subjects.TransferStatus) int64 { return 1024 + int64(len(s.ErrorMessage)) }

func newTransfers(retention time.Duration, maxBytes int64) *transfers {
	return &transfers{jobs: map[string]*job{}, queue: make(chan *job, transferQueueLen), retention: retention, maxBytes: maxBytes}
}

func (t *transfers) get(id string, now time.Time) *job {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prune(now)
	return t.jobs[id]
}

func (t *transfers) add(j *job) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.jobs[j.status.TransferID] = j
}

// finish enters a job that ended into the history.
func (t *transfers) finish(s subjects.TransferStatus, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := &finished{id: s.TransferID, at: now, bytes: jobBytes(s)}
	t.done.PushBack(f)
	t.doneBytes += f.bytes
	t.prune(now)
}

// prune forgets the finished jobs past the retention or the byte bound.
func (t *transfers) prune(now time.Time) {
	for e := t.done.Front(); e != nil; e = t.done.Front() {
		f := e.Value.(*finished)
		if now.Sub(f.at) < t.retention && t.doneBytes <= t.maxBytes {
			return
		}
		t.done.Remove(e)
		t.doneBytes -= f.bytes
		delete(t.jobs, f.id)
	}
}

// transfer lends the source to a job and queues it; a runner does the
// copy. The reply is the job's status, queued.
func (w *Worker) transfer(_ context.Context, g *gpu, call ledger.Call, req *subjects.TransferRequest) (any, error) {
	who := call.Who
	if err := g.Find(req.AllocationID, who); err != nil {
		return nil, err
	}
	dst := g
	if req.TargetDeviceID != "" && req.TargetDeviceID != g.ID() {
		dst = w.gpu(req.TargetDeviceID)
		if dst == nil {
			if strings.HasPrefix(req.TargetDeviceID, w.cfg.Node+"-") {
				return nil, ledger.Errorf(ledger.ErrDeviceNotFound, "node %s has no device %s", w.cfg.Node, req.TargetDeviceID)
			}
			return nil, fmt.Errorf("target device %s is not on this node (%s); transfers between nodes are not supported: %w",
				req.TargetDeviceID, w.cfg.Node, ledger.ErrUnsupported)
		}
	}
	lent, err := g.Lend(req.AllocationID, ledger.Target{DeviceID: dst.ID(), TotalBytes: dst.Info().TotalBytes, Type: req.TargetAllocationType}, req.Mode, who)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	j := &job{
		src: g, dst: dst, lent: lent, verify: req.Verify, tenant: who.Tenant,
		status: subjects.TransferStatus{
			TransferID:           uuid.NewString(),
			Status:               subjects.TransferQueued,
			Mode:                 req.Mode,
			SourceDeviceID:       g.ID(),
			SourceAllocationID:   req.AllocationID,
			TargetDeviceID:       dst.ID(),
			TargetAllocationType: req.TargetAllocationType,
			BytesTotal:           lent.Allocation.SizeBytes,
			CreatedAt:            now,
		},
	}
	select {
	case w.transfers.queue <- j:
	default:
		g.Return(req.AllocationID)
		return nil, fmt.Errorf("%d transfers are queued; try again later: %w", transferQueueLen, device.ErrUnavailable)
	}
	w.transfers.add(j)
	return j.snapshot(now), nil
}

func (w *Worker) getTransfer(_ context.Context, g *gpu, call ledger.Call, req *subjects.GetTransferRequest) (any, error) {
	j := w.transfers.get(req.TransferID, call.Now)
	if who := call.Who; j == nil || (j.src != g && j.dst != g) || (!who.Operator() && j.tenant != who.Tenant) {
		return nil, ledger.Errorf(ledger.ErrTransferNotFound, "no transfer %s from or to %s", req.TransferID, g.ID())
	}
	return j.snapshot(call.Now.UTC()), nil
}

// runTransfers runs queued jobs with ctx until stop is closed, and then the
// jobs still queued, so none is left queued.
func (w *Worker) runTransfers(ctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case j := <-w.transfers.queue:
			w.runTransfer(ctx, j)
		case <-stop:
			for {
				select {
				case j := <-w.transfers.queue:
					w.runTransfer(ctx, j)
				default:
					return
				}
			}
		}
	}
}

func (w *Worker) runTransfer(ctx context.Context, j *job) {
	started := time.Now().UTC()
	j.update(func(s *subjects.TransferStatus) { s.Status, s.StartedAt = subjects.TransferRunning, &started })

	// Reserve the destination.
	d := j.dst
	d.mu.Lock()
	destID, dstLoc, err := d.Receive(ctx, ledger.Call{Who: ledger.Who{Tenant: j.tenant}, Now: started}, j.lent, j.status.TargetAllocationType)
	if err == nil {
		w.recheck(d)
	}
	d.mu.Unlock()
	if err != nil {
		w.finish(ctx, j, "", err)
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
	w.finish(ctx, j, destID, w.copyChunks(ctx, j, dstLoc))
}

// copyChunks copies the allocation a chunk at a time, so progress moves,
// and with --verify checksums each chunk while the next one copies.
func (w *Worker) copyChunks(ctx context.Context, j *job, dst device.Location) error {
	var v *verifier
	if j.verify {
		v = w.startVerifier(ctx, j.lent.Loc, dst, j.lent.Allocation.SizeBytes)
	}
	var landed int64
	err := w.copyInChunks(ctx, dst, j.lent.Loc, j.lent.Allocation.SizeBytes, func(m int64) {
		j.bytesDone.Add(m)
		if v != nil {
			v.add(span{landed, m})
		}
		landed += m
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

// copyInChunks copies n bytes a transferChunk at a time and calls landed
// with each chunk's length, in order, once it is copied.
func (w *Worker) copyInChunks(ctx context.Context, dst, src device.Location, n int64, landed func(int64)) error {
	if cc, ok := w.cfg.Backend.(ledger.ChunkCopier); ok {
		return cc.CopyChunks(ctx, dst, src, n, transferChunk, landed)
	}
	for off := int64(0); off < n; off += transferChunk {
		m := min(transferChunk, n-off)
		s, d := src, dst
		s.Addr += uint64(off)
		d.Addr += uint64(off)
		if err := w.cfg.Backend.Copy(ctx, d, s, m); err != nil {
			return fmt.Errorf("copying bytes %d..%d: %w", off, off+m, err)
		}
		landed(m)
	}
	return nil
}

// finish settles a job: on success, a move frees the source; on failure the
// destination (destID, when there is one) is freed. Either way both
// allocations stop being busy.
func (w *Worker) finish(ctx context.Context, j *job, destID string, err error) {
	now := time.Now().UTC()
	s, srcID := j.src, j.status.SourceAllocationID
	s.mu.Lock()
	if serr := s.Settle(srcID, err == nil, err == nil && j.status.Mode == subjects.ModeMove, now); serr != nil && err == nil {
		err = serr
	}
	w.recheck(s)
	s.mu.Unlock()
	if destID != "" {
		d := j.dst
		d.mu.Lock()
		if derr := d.Settle(destID, false, err != nil, now); derr != nil {
			w.log.Error("settling a transfer's destination", "device", d.ID(), "err", derr)
		}
		w.recheck(d)
		d.mu.Unlock()
	}
	size := j.lent.Allocation.SizeBytes
	var final subjects.TransferStatus
	j.update(func(st *subjects.TransferStatus) {
		st.CompletedAt = &now
		if err == nil {
			st.Status = subjects.TransferCompleted
		} else {
			we := wireError(err)
			st.Status, st.ErrorCode, st.ErrorMessage = subjects.TransferFailed, we.Code, we.Message
			st.DestinationAllocationID = ""
		}
		final = *st
	})
	w.transfers.finish(final, now)
	if err != nil {
		level := slog.LevelDebug
		if code := wireError(err).Code; code == subjects.CodeInternal || code == subjects.CodeDeviceUnavailable {
			level = slog.LevelWarn
		}
		w.log.Log(context.Background(), level, "transfer failed", "transfer_id", j.status.TransferID, "err", subjects.Clip(err.Error()))
	} else {
		w.metrics.transfers.Add(float64(size))
		w.log.Debug("transfer completed", "transfer_id", j.status.TransferID, "from", s.ID(), "to", j.dst.ID(), "bytes", size)
	}
}
