package worker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/transfer"
)

// transfer lends the source to a job and queues it; a runner of the
// transfer manager does the copy. The reply is the job's status, queued.
func (w *Worker) transfer(_ context.Context, g *gpu, call ledger.Call, req *subjects.TransferRequest) (any, error) {
	if err := g.Find(req.AllocationID, call.Who); err != nil {
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
	lent, err := g.Lend(req.AllocationID, ledger.Target{DeviceID: dst.ID(), TotalBytes: dst.Info().TotalBytes, Type: req.TargetAllocationType}, req.Mode, call.Who)
	if err != nil {
		return nil, err
	}
	st, err := w.transfers.Submit(transfer.Request{Src: &locked{w, g}, Dst: &locked{w, dst}, Lent: lent,
		Type: req.TargetAllocationType, Mode: req.Mode, Verify: req.Verify, Call: call})
	if err != nil {
		g.Return(req.AllocationID)
		return nil, err
	}
	return st, nil
}

func (w *Worker) getTransfer(_ context.Context, g *gpu, call ledger.Call, req *subjects.GetTransferRequest) (any, error) {
	st, ok := w.transfers.Get(req.TransferID, g.ID(), call.Who, call.Now)
	if !ok {
		return nil, ledger.Errorf(ledger.ErrTransferNotFound, "no transfer %s from or to %s", req.TransferID, g.ID())
	}
	return st, nil
}

// locked is a device as a transfer job reaches it: under its lock, its
// pressure checked after each step.
type locked struct {
	w *Worker
	g *gpu
}

func (l *locked) ID() string { return l.g.ID() }

func (l *locked) Do(f func(*ledger.Device)) {
	l.g.mu.Lock()
	defer l.g.mu.Unlock()
	f(l.g.Device)
	l.w.recheck(l.g)
}

// transferDone counts and logs a finished transfer.
func (w *Worker) transferDone(s subjects.TransferStatus) {
	if s.Status == subjects.TransferCompleted {
		w.metrics.transfers.Add(float64(s.BytesTotal))
		w.log.Debug("transfer completed", "transfer_id", s.TransferID, "from", s.SourceDeviceID, "to", s.TargetDeviceID, "bytes", s.BytesTotal)
		return
	}
	level := slog.LevelDebug
	if s.ErrorCode == subjects.CodeInternal || s.ErrorCode == subjects.CodeDeviceUnavailable {
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, "transfer failed", "transfer_id", s.TransferID, "code", s.ErrorCode, "err", s.ErrorMessage)
}
