package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/internal/httpcall"
	"github.com/memworker/memworker/subjects"
)

// runCmd launches a process under a reservation and is its holder: it
// waits in the admission queue, starts the process, renews the
// reservation's lease while it lives, relays the worker's release and
// restore asks to it (HTTP or a signal), and frees the reservation when
// it exits.
type runCmd struct {
	Size          string        `name:"size" required:"" help:"The reservation (a size such as 40GiB)."`
	Wait          time.Duration `name:"wait" help:"Wait this long for room (and for holders of lower priority to give memory back)."`
	Priority      int           `help:"Priority (-100 to 100): holders of lower priority are asked to give memory back for it, and it gives memory back to higher ones."`
	Holder        string        `name:"holder" enum:",vllm,sglang,signal" default:"" help:"How the process gives memory back: vllm or sglang (HTTP at --holder-url), signal (--release-signal, --restore-signal); none: it is never asked."`
	HolderURL     string        `name:"holder-url" help:"The model server's base URL (vllm, sglang)."`
	ReleaseSignal string        `name:"release-signal" default:"SIGUSR1" help:"The signal that asks the process to give memory back (--holder signal)."`
	RestoreSignal string        `name:"restore-signal" default:"SIGUSR2" help:"The signal that asks it to take memory again."`
	Keep          string        `name:"keep" help:"What the process keeps when it gives memory back (default 0)."`
	TTL           time.Duration `name:"ttl" default:"30s" help:"The reservation's lease, renewed while the process lives: if memctl dies, it lapses."`
	Command       []string      `arg:"" passthrough:"" help:"The command and its arguments; {size_bytes}, {size_gib} and {fraction} (size / device memory) are replaced."`
}

func (r *runCmd) Run(e *env) error {
	n, err := bytesize.Parse(r.Size)
	if err != nil {
		return usageErr("--size: %v", err)
	}
	size := int64(n)
	var keep int64
	if r.Keep != "" {
		k, err := bytesize.Parse(r.Keep)
		if err != nil {
			return usageErr("--keep: %v", err)
		}
		keep = int64(k)
	}
	if r.Holder != "" && r.Holder != "signal" && r.HolderURL == "" {
		return usageErr("--holder %s needs --holder-url", r.Holder)
	}
	if len(r.Command) > 0 && r.Command[0] == "--" {
		r.Command = r.Command[1:]
	}
	if len(r.Command) == 0 {
		return usageErr("give the command to run after --")
	}
	dev, _, err := e.roomiest()
	if err != nil {
		return err
	}
	h := &holding{e: e, cmd: r, dev: dev, keep: keep}
	req := subjects.AllocateRequest{SizeBytes: size, AllocationType: subjects.Reservation, TTLSeconds: r.TTL.Seconds(),
		WaitSeconds: r.Wait.Seconds(), Priority: r.Priority, Purpose: "memctl run"}
	var u subjects.Usage
	ur, err := e.client.Do(e.ctx, subjects.GetUsage, dev, nil, &u)
	if err != nil {
		return err
	}
	if r.Holder != "" {
		// A tenant's holders listen under holders.<tenant>.: its account
		// exports them to the worker's.
		owner := "operator"
		if ur.TenantUsage != nil {
			owner = ur.TenantUsage.Tenant
		}
		h.subject = subjects.HolderPrefix + owner + ".memctl-" + nuid.Next()
		sub, err := e.nc.Subscribe(h.subject, h.serve)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		req.Reclaim = &subjects.Reclaim{Subject: h.subject, KeepBytes: keep}
	}
	ctx, cancel := context.WithTimeout(e.ctx, r.Wait+e.cli.Timeout)
	var a subjects.Allocation
	_, err = e.client.Do(ctx, subjects.Allocate, dev, req, &a)
	cancel()
	if err != nil {
		return err
	}
	h.id = a.AllocationID
	defer h.free()
	if a.WaitedSeconds > 0 {
		fmt.Fprintf(e.stderr, "memctl: %s reserved on %s at %s, after waiting %.3f s\n", humanize.IBytes(uint64(a.SizeBytes)), dev,
			a.CreatedAt.Format(time.RFC3339Nano), a.WaitedSeconds)
	} else {
		fmt.Fprintf(e.stderr, "memctl: %s reserved on %s (%s)\n", humanize.IBytes(uint64(a.SizeBytes)), dev, a.AllocationID)
	}

	fraction := 0.0
	if u.TotalBytes > 0 {
		fraction = float64(size) / float64(u.TotalBytes)
	}
	args := make([]string, len(r.Command))
	for i, s := range r.Command {
		args[i] = strings.NewReplacer("{size_bytes}", strconv.FormatInt(size, 10),
			"{size_gib}", strconv.FormatFloat(float64(size)/(1<<30), 'f', -1, 64),
			"{fraction}", strconv.FormatFloat(fraction, 'f', 4, 64)).Replace(s)
	}
	c := exec.Command(args[0], args[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, e.out, e.stderr
	c.Env = append(os.Environ(), "MEMWORKER_DEVICE="+dev, "MEMWORKER_ALLOCATION_ID="+h.id,
		"MEMWORKER_SIZE_BYTES="+strconv.FormatInt(size, 10))
	if i := strings.LastIndex(dev, "-gpu"); i >= 0 {
		c.Env = append(c.Env, "CUDA_VISIBLE_DEVICES="+dev[i+len("-gpu"):])
	}
	if err := c.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", args[0], err)
	}
	h.setProcess(c.Process)
	// The reservation is the process's: NVML follows its pid.
	if _, err := e.client.Do(e.ctx, subjects.Resize, dev, subjects.ResizeRequest{AllocationID: h.id, SizeBytes: size, PID: c.Process.Pid}, nil); err != nil {
		fmt.Fprintf(e.stderr, "memctl: tying the reservation to pid %d: %v\n", c.Process.Pid, err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	renew := time.NewTicker(r.TTL / 3)
	defer renew.Stop()
	for {
		select {
		case s := <-sigs:
			_ = c.Process.Signal(s) // the process decides; memctl waits for it
		case <-renew.C:
			if _, err := e.client.Do(e.ctx, subjects.Renew, dev, subjects.RenewRequest{AllocationID: h.id}, nil); err != nil {
				fmt.Fprintf(e.stderr, "memctl: renewing %s: %v\n", h.id, err)
			}
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return &exitError{exit.ExitCode(), fmt.Errorf("%s exited with status %d", args[0], exit.ExitCode())}
			}
			return err
		}
	}
}

// holding is memctl run's side of a handoff.
type holding struct {
	e       *env
	cmd     *runCmd
	dev, id string
	subject string
	keep    int64
	mu      sync.Mutex
	proc    *os.Process
}

func (h *holding) setProcess(p *os.Process) {
	h.mu.Lock()
	h.proc = p
	h.mu.Unlock()
}

// serve answers the worker's asks: it relays them to the process and, for
// a release, shrinks the reservation to what the process keeps, and
// answers once the worker sees the process tree there (NVML).
func (h *holding) serve(m *nats.Msg) {
	var ask struct {
		RequestID string                 `json:"request_id"`
		Action    string                 `json:"action"`
		Data      subjects.ReclaimNotice `json:"data"`
	}
	err := json.Unmarshal(m.Data, &ask)
	if err == nil {
		ctx, cancel := context.WithDeadline(h.e.ctx, ask.Data.Deadline)
		err = h.relay(ctx, ask.Action)
		if err == nil && ask.Action == subjects.ActionRelease {
			err = h.shrink(ctx)
		}
		cancel()
	}
	reply := subjects.Reply{Success: err == nil, RequestID: ask.RequestID, Timestamp: time.Now().UTC()}
	if err != nil {
		reply.ErrorCode, reply.ErrorMessage = subjects.CodeConflict, err.Error()
	}
	body, _ := json.Marshal(reply)
	_ = m.Respond(body)
}

// relay tells the process to release or restore.
func (h *holding) relay(ctx context.Context, action string) error {
	base := h.cmd.HolderURL
	switch h.cmd.Holder {
	case "signal":
		h.mu.Lock()
		p := h.proc
		h.mu.Unlock()
		if p == nil {
			return errors.New("the process has not started")
		}
		name := h.cmd.ReleaseSignal
		if action == subjects.ActionRestore {
			name = h.cmd.RestoreSignal
		}
		sig, ok := map[string]syscall.Signal{"SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2, "SIGHUP": syscall.SIGHUP,
			"SIGCONT": syscall.SIGCONT, "SIGSTOP": syscall.SIGSTOP}[strings.ToUpper(name)]
		if !ok {
			return fmt.Errorf("unknown signal %s", name)
		}
		return p.Signal(sig)
	case "vllm":
		return post(ctx, base+map[string]string{subjects.ActionRelease: "/sleep?level=1", subjects.ActionRestore: "/wake_up"}[action])
	case "sglang":
		return post(ctx, base+map[string]string{subjects.ActionRelease: "/release_memory_occupation", subjects.ActionRestore: "/resume_memory_occupation"}[action])
	}
	return nil
}

// shrink resizes the reservation to what the process keeps (the worker
// then watches NVML for the release) and waits, until ctx ends, for a
// reading taken after the process was told that shows it there.
func (h *holding) shrink(ctx context.Context) error {
	told := time.Now()
	if _, err := h.e.client.Do(ctx, subjects.Resize, h.dev, subjects.ResizeRequest{AllocationID: h.id, SizeBytes: h.keep}, nil); err != nil {
		return err
	}
	for {
		var page subjects.AllocationsReply
		if _, err := h.e.client.Do(ctx, subjects.GetAllocations, h.dev, subjects.AllocationsRequest{AllocationIDs: []string{h.id}}, &page); err != nil {
			return err
		}
		if len(page.Allocations) == 1 {
			if a := page.Allocations[0]; a.ObservedAt != nil && a.ObservedAt.After(told) && a.ObservedBytes <= h.keep {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the process still uses its memory: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// free gives the reservation back.
func (h *holding) free() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.e.ctx), h.e.cli.Timeout)
	defer cancel()
	if _, err := h.e.client.Do(ctx, subjects.Deallocate, h.dev, subjects.DeallocateRequest{AllocationID: h.id}, nil); err != nil {
		fmt.Fprintf(h.e.stderr, "memctl: freeing %s: %v (its lease lapses)\n", h.id, err)
	}
}

func post(ctx context.Context, url string) error {
	return httpcall.Do(ctx, http.MethodPost, url, nil)
}
