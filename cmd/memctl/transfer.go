package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jedib0t/go-pretty/v6/progress"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
)

type transferCmd struct {
	ID     string `arg:"" help:"Allocation id on --device."`
	To     string `help:"Target device id (default: the same device)."`
	Host   bool   `help:"To pinned host memory."`
	Move   bool   `help:"Move (free the source) instead of copy."`
	Verify bool   `help:"Compare checksums of source and copy."`
	Follow bool   `help:"Show progress until the transfer ends."`
}

func (c *transferCmd) Run(e *env) error {
	groups, err := e.devicesOf([]string{c.ID})
	if err != nil {
		return err
	}
	var dev string
	for d := range groups {
		dev = d
	}
	req := subjects.TransferRequest{AllocationID: c.ID, TargetDeviceID: c.To, Verify: c.Verify, Mode: subjects.ModeCopy}
	if c.Move {
		req.Mode = subjects.ModeMove
	}
	if c.Host {
		req.TargetAllocationType = subjects.Pinned
	}
	var st subjects.TransferStatus
	if _, err := e.client.Do(e.ctx, subjects.Transfer, dev, req, &st); err != nil {
		return err
	}
	if c.Follow {
		if st, err = e.follow(dev, st); err != nil {
			return err
		}
	}
	if st.DestinationAllocationID != "" {
		e.ids.put(st.DestinationAllocationID, st.TargetDeviceID)
	}
	if c.Move && st.Status == subjects.TransferCompleted {
		e.ids.forget(c.ID)
	}
	if e.cli.JSON {
		return e.printJSON(st)
	}
	fmt.Fprintf(e.out, "transfer %s %s: %s of %s", st.TransferID, st.Status, size(st.BytesDone), size(st.BytesTotal))
	if st.ThroughputBytesPerSecond > 0 {
		fmt.Fprintf(e.out, " at %s/s", size(int64(st.ThroughputBytesPerSecond)))
	}
	if st.CopyThroughputBytesPerSecond > 0 {
		fmt.Fprintf(e.out, " (copy %s/s", size(int64(st.CopyThroughputBytesPerSecond)))
		if st.Verified {
			fmt.Fprintf(e.out, ", verify +%.2f s", st.VerifySeconds)
		}
		fmt.Fprint(e.out, ")")
	}
	if st.DestinationAllocationID != "" {
		fmt.Fprintf(e.out, ", destination %s on %s", st.DestinationAllocationID, st.TargetDeviceID)
	}
	fmt.Fprintln(e.out)
	if st.Status == subjects.TransferFailed {
		return &exitError{exitWorkerError, &subjects.Error{Code: st.ErrorCode, Message: st.ErrorMessage}}
	}
	return nil
}

// spin shows an indeterminate progress line with msg until the returned
// function is called (ok: done, else errored).
func (e *env) spin(msg string) func(ok bool) {
	stop, _ := e.spinTracker(msg)
	return stop
}

// spinTracker is spin that also returns the tracker, to update its
// message while it spins.
func (e *env) spinTracker(msg string) (func(ok bool), *progress.Tracker) {
	pw := progress.NewWriter()
	pw.SetOutputWriter(e.out)
	pw.SetUpdateFrequency(100 * time.Millisecond)
	tracker := &progress.Tracker{Message: msg, Total: 0}
	pw.AppendTracker(tracker)
	go pw.Render()
	return func(ok bool) {
		if ok {
			tracker.MarkAsDone()
		} else {
			tracker.MarkAsErrored()
		}
		for pw.IsRenderInProgress() {
			pw.Stop()
			time.Sleep(20 * time.Millisecond)
		}
	}, tracker
}

// binaryBytes shows the bar, its speed and the summary in the same binary
// units (go-pretty's UnitsBytes is decimal).
var binaryBytes = progress.Units{Formatter: size}

// follow polls the job, with a progress bar on a terminal, until it ends.
func (e *env) follow(dev string, st subjects.TransferStatus) (subjects.TransferStatus, error) {
	var pw progress.Writer
	var tracker *progress.Tracker
	if e.tty {
		pw = progress.NewWriter()
		pw.SetOutputWriter(e.out)
		pw.SetUpdateFrequency(100 * time.Millisecond)
		pw.Style().Visibility.Speed = true
		pw.Style().Visibility.ETA = true
		tracker = &progress.Tracker{Message: "transfer " + st.TransferID, Total: st.BytesTotal, Units: binaryBytes}
		pw.AppendTracker(tracker)
		go pw.Render()
		defer func() {
			for pw.IsRenderInProgress() {
				pw.Stop()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	for st.Status == subjects.TransferQueued || st.Status == subjects.TransferRunning {
		select {
		case <-e.ctx.Done():
			return st, e.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := e.client.Do(e.ctx, subjects.GetTransfer, dev, subjects.GetTransferRequest{TransferID: st.TransferID}, &st); err != nil {
			return st, err
		}
		if tracker != nil {
			tracker.SetValue(st.BytesDone)
		}
	}
	if tracker != nil {
		if st.Status == subjects.TransferCompleted {
			tracker.MarkAsDone()
		} else {
			tracker.MarkAsErrored()
		}
	}
	return st, nil
}

func contextWithTimeout(e *env) (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.ctx, e.cli.Timeout)
}

func noResponders(err error, target string) error {
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: %s", client.ErrNoWorker, target)
	}
	return err
}
