package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/table"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
)

type allocCmd struct {
	Size       string        `arg:"" help:"Size, e.g. 512MiB, 2G or bytes (binary units: 2G, 2GB and 2GiB are all 2 GiB)."`
	Type       string        `name:"type" default:"VRAM" enum:"VRAM,PINNED,RESERVATION" help:"VRAM, PINNED host memory, or a RESERVATION held for another process (--pid)."`
	PID        int           `name:"pid" help:"The process a RESERVATION is for."`
	Wait       time.Duration `name:"wait" help:"Wait this long for room instead of failing (needs --ttl)."`
	Priority   int           `help:"Priority among the waiters (-100 to 100)."`
	Purpose    string        `help:"What the memory is for."`
	Model      string        `help:"Model id."`
	Persistent bool          `help:"Survive clear without --force."`
	TTL        time.Duration `name:"ttl" help:"Free automatically after this long."`
	Alignment  int64         `help:"Alignment in bytes (power of two)."`
	Export     bool          `help:"Return a CUDA IPC handle for other processes."`
	holderFlags
}

// holderFlags make an allocation a holder: asked to give memory back to a
// waiter of higher priority, and to take it again.
type holderFlags struct {
	Holder         string `name:"holder" enum:",vllm,sglang" default:"" help:"Make it a holder served by a model server of this kind at --holder-url (vllm: POST /sleep?level=1 and /wake_up; sglang: /release_memory_occupation and /resume_memory_occupation)."`
	HolderURL      string `name:"holder-url" help:"The model server's base URL, e.g. http://127.0.0.1:8000."`
	ReclaimSubject string `name:"reclaim-subject" help:"Make it a holder asked over NATS request-reply on this subject."`
	ReleaseURL     string `name:"release-url" help:"Make it a holder asked by HTTP POST to this URL to give memory back."`
	RestoreURL     string `name:"restore-url" help:"...and to this URL to take it again."`
	Keep           string `name:"keep" help:"What a holder keeps when it gives memory back (a size; default 0)."`
}

// reclaim is the holder spec the flags ask for, nil for none.
func (h holderFlags) reclaim() (*subjects.Reclaim, error) {
	var r subjects.Reclaim
	switch h.Holder {
	case "vllm":
		r.ReleaseURL, r.RestoreURL = h.HolderURL+"/sleep?level=1", h.HolderURL+"/wake_up"
	case "sglang":
		r.ReleaseURL, r.RestoreURL = h.HolderURL+"/release_memory_occupation", h.HolderURL+"/resume_memory_occupation"
	}
	if h.Holder != "" && h.HolderURL == "" {
		return nil, usageErr("--holder %s needs --holder-url", h.Holder)
	}
	if h.ReleaseURL != "" {
		r.ReleaseURL, r.RestoreURL = h.ReleaseURL, h.RestoreURL
	}
	r.Subject = h.ReclaimSubject
	if r.Subject == "" && r.ReleaseURL == "" {
		if h.Keep != "" {
			return nil, usageErr("--keep needs --holder, --reclaim-subject or --release-url")
		}
		return nil, nil
	}
	if h.Keep != "" {
		n, err := bytesize.Parse(h.Keep)
		if err != nil {
			return nil, usageErr("--keep: %v", err)
		}
		r.KeepBytes = int64(n)
	}
	return &r, nil
}

func (a *allocCmd) Run(e *env) error {
	n, err := bytesize.Parse(a.Size)
	if err != nil {
		return usageErr("%v", err)
	}
	if a.Wait > 0 && a.TTL == 0 {
		return usageErr("--wait needs --ttl: a waiting allocation is a lease, so that a client that gave up does not hold it forever")
	}
	var out subjects.Allocation
	req := subjects.AllocateRequest{
		SizeBytes: int64(n), AllocationType: subjects.AllocationType(a.Type), Purpose: a.Purpose, ModelID: a.Model,
		Persistent: a.Persistent, TTLSeconds: a.TTL.Seconds(), Alignment: a.Alignment, Export: a.Export,
		PID: a.PID, WaitSeconds: a.Wait.Seconds(), Priority: a.Priority,
	}
	if req.Reclaim, err = a.reclaim(); err != nil {
		return err
	}
	dev, note, err := e.roomiest()
	if err != nil {
		return err
	}
	if note != "" && !e.cli.JSON {
		fmt.Fprintf(e.out, "allocating on %s %s\n", dev, note)
	}
	ctx, cancel := context.WithTimeout(e.ctx, a.Wait+e.cli.Timeout)
	defer cancel()
	if a.Wait > 0 && e.tty {
		msg := fmt.Sprintf("waiting up to %v for %s on %s", a.Wait, size(int64(n)), dev)
		stop, tracker := e.spinTracker(msg)
		// Once a second, what the device has and who else waits.
		watching, stopWatching := context.WithCancel(ctx)
		go func() {
			for t := time.NewTicker(time.Second); ; {
				select {
				case <-watching.Done():
					t.Stop()
					return
				case <-t.C:
				}
				var u subjects.Usage
				if _, err := e.client.Do(watching, subjects.GetUsage, dev, nil, &u); err == nil {
					tracker.UpdateMessage(fmt.Sprintf("%s: %s available, %s waiting for %s", msg, size(u.AvailableBytes),
						plural(u.WaitingRequests, "request"), size(u.WaitingBytes)))
				}
			}
		}()
		_, err = e.client.Do(ctx, subjects.Allocate, dev, req, &out)
		stopWatching()
		stop(err == nil)
	} else {
		_, err = e.client.Do(ctx, subjects.Allocate, dev, req, &out)
	}
	if err != nil {
		return err
	}
	e.ids.put(out.AllocationID, out.DeviceID)
	if e.cli.JSON {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.out, "%s  %s on %s (%s reserved)\n", out.AllocationID, size(out.SizeBytes), out.DeviceID, size(out.ReservedBytes))
	if out.WaitedSeconds > 0 {
		fmt.Fprintf(e.out, "granted after waiting %.1f s\n", out.WaitedSeconds)
	}
	if out.IPCHandle != "" {
		fmt.Fprintf(e.out, "ipc_handle %s offset %d\n", out.IPCHandle, out.IPCOffset)
	}
	return nil
}

type resizeCmd struct {
	ID   string        `arg:"" name:"id" help:"The reservation's id."`
	Size string        `arg:"" help:"Its new size (shrinking is immediate; growing must fit, as an allocation)."`
	PID  int           `name:"pid" help:"The process it is now for."`
	Wait time.Duration `name:"wait" help:"Wait this long for room to grow (and for holders of lower priority to give memory back)."`
}

func (r *resizeCmd) Run(e *env) error {
	n, err := bytesize.Parse(r.Size)
	if err != nil {
		return usageErr("%v", err)
	}
	groups, err := e.devicesOf([]string{r.ID})
	if err != nil {
		return err
	}
	var out subjects.Allocation
	ctx, cancel := context.WithTimeout(e.ctx, r.Wait+e.cli.Timeout)
	defer cancel()
	for dev := range groups {
		req := subjects.ResizeRequest{AllocationID: r.ID, SizeBytes: int64(n), PID: r.PID, WaitSeconds: r.Wait.Seconds()}
		if _, err := e.client.Do(ctx, subjects.Resize, dev, req, &out); err != nil {
			return err
		}
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.out, "%s  %s on %s\n", out.AllocationID, size(out.SizeBytes), out.DeviceID)
	return nil
}

type freeCmd struct {
	IDs []string `arg:"" name:"id" help:"Allocation ids."`
}

func (f *freeCmd) Run(e *env) error {
	groups, err := e.devicesOf(f.IDs)
	if err != nil {
		return err
	}
	var out subjects.DeallocateReply
	for _, dev := range slices.Sorted(maps.Keys(groups)) {
		var r subjects.DeallocateReply
		if _, err := e.client.Do(e.ctx, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: groups[dev]}, &r); err != nil {
			return err
		}
		out.DeallocatedIDs = append(out.DeallocatedIDs, r.DeallocatedIDs...)
		out.FreedBytes += r.FreedBytes
		e.ids.forget(r.DeallocatedIDs...)
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.out, "freed %s, %s\n", plural(len(out.DeallocatedIDs), "allocation"), size(out.FreedBytes))
	return nil
}

type renewCmd struct {
	IDs []string      `arg:"" name:"id" help:"Lease ids."`
	TTL time.Duration `name:"ttl" help:"Renew for this long (default: each lease's own ttl)."`
}

func (r *renewCmd) Run(e *env) error {
	groups, err := e.devicesOf(r.IDs)
	if err != nil {
		return err
	}
	var out subjects.RenewReply
	for _, dev := range slices.Sorted(maps.Keys(groups)) {
		var part subjects.RenewReply
		if _, err := e.client.Do(e.ctx, subjects.Renew, dev, subjects.RenewRequest{AllocationIDs: groups[dev], TTLSeconds: r.TTL.Seconds()}, &part); err != nil {
			return err
		}
		out.Renewed = append(out.Renewed, part.Renewed...)
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	for _, l := range out.Renewed {
		fmt.Fprintf(e.out, "%s  expires %s\n", l.AllocationID, l.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

type allocationsCmd struct {
	Purpose string `help:"Only this purpose."`
	Model   string `help:"Only this model."`
	Limit   int    `default:"100" help:"Page size."`
	Cursor  string `help:"Continue after this allocation id."`
}

func (a *allocationsCmd) Run(e *env) error {
	replies, err := e.perDevice(subjects.GetAllocations, subjects.AllocationsRequest{Purpose: a.Purpose, ModelID: a.Model, Limit: a.Limit, Cursor: a.Cursor})
	if err != nil {
		return err
	}
	// Without --device, the whole fleet: each device's first page.
	var out subjects.AllocationsReply
	devs := slices.Sorted(maps.Keys(replies))
	for _, dev := range devs {
		var page subjects.AllocationsReply
		if err := json.Unmarshal(replies[dev], &page); err != nil {
			return err
		}
		out.Allocations = append(out.Allocations, page.Allocations...)
		out.TotalCount += page.TotalCount
		if len(devs) == 1 {
			out.NextCursor = page.NextCursor
		}
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	t := e.table("ID", "Device", "Tenant", "Size", "Reserved", "Type", "Purpose", "Model", "Persistent", "Created", "Expires", "Observed", "Holder")
	for _, al := range out.Allocations {
		exp := ""
		if al.ExpiresAt != nil {
			exp = al.ExpiresAt.Format(time.RFC3339)
		}
		typ := string(al.AllocationType)
		if al.Offloaded {
			typ += " (offloaded)"
		}
		observed := ""
		if al.AllocationType == subjects.Reservation {
			typ += fmt.Sprintf(" (pid %d)", al.PID)
			observed = size(al.ObservedBytes)
		}
		tenant := cmp.Or(al.Tenant, "operator")
		if al.User != "" {
			tenant += " (" + al.User + ")"
		}
		holder := ""
		if al.Reclaim != nil {
			holder = fmt.Sprintf("%s, priority %d, keeps %s", al.ReclaimState, al.Priority, size(al.Reclaim.KeepBytes))
		}
		t.AppendRow(table.Row{al.AllocationID, al.DeviceID, tenant, size(al.SizeBytes), size(al.ReservedBytes), typ, al.Purpose, al.ModelID, al.Persistent, al.CreatedAt.Format(time.RFC3339), exp, observed, holder})
	}
	footer := fmt.Sprintf("%d of %d", len(out.Allocations), out.TotalCount)
	if out.NextCursor != "" {
		footer += ", more with --cursor " + out.NextCursor
	}
	t.Render()
	fmt.Fprintln(e.out, footer)
	return nil
}

type clearCmd struct {
	Purpose string `help:"Only this purpose."`
	Model   string `help:"Only this model."`
	Force   bool   `help:"Free persistent allocations too."`
	Yes     bool   `short:"y" help:"Do not ask for confirmation (needed when stdin is not a terminal)."`
}

func (c *clearCmd) Run(e *env) error {
	dev, err := e.device()
	if err != nil {
		return err
	}
	if !c.Yes {
		if err := c.confirm(e, dev); err != nil {
			return err
		}
	}
	var out subjects.ClearReply
	if _, err := e.client.Do(e.ctx, subjects.Clear, dev, subjects.ClearRequest{Purpose: c.Purpose, ModelID: c.Model, Force: c.Force}, &out); err != nil {
		return err
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.out, "cleared %s (%s), kept %d persistent, released %s (%s) to the device\n",
		plural(out.ClearedAllocations, "allocation"), size(out.ClearedBytes), out.SkippedPersistent, plural(out.ReleasedSegments, "segment"), size(out.ReleasedBytes))
	return nil
}

// confirm asks on the terminal before clear frees what others may be
// using; without a terminal it refuses, so a script says --yes.
func (c *clearCmd) confirm(e *env, dev string) error {
	scope := "every allocation"
	if c.Purpose != "" {
		scope += fmt.Sprintf(" for %q", c.Purpose)
	}
	if c.Model != "" {
		scope += fmt.Sprintf(" of model %q", c.Model)
	}
	if !c.Force {
		scope += " that is not persistent"
	}
	if e.in == nil {
		return usageErr("clear frees %s on %s: pass --yes to confirm (stdin is not a terminal to ask on)", scope, dev)
	}
	var page subjects.AllocationsReply
	if _, err := e.client.Do(e.ctx, subjects.GetAllocations, dev, subjects.AllocationsRequest{Purpose: c.Purpose, ModelID: c.Model, Limit: 1}, &page); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "Free %s on %s (matching now: %s)? [y/N] ", scope, dev, plural(page.TotalCount, "allocation"))
	answer, _ := bufio.NewReader(e.in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return &exitError{exitUsage, errors.New("clear not confirmed; nothing freed")}
}

type defragCmd struct{}

func (defragCmd) Run(e *env) error {
	var out subjects.DefragmentReply
	if err := e.do(subjects.Defragment, subjects.DefragmentRequest{}, &out); err != nil {
		return err
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	// On virtual memory free pieces go back from segments that stay, so
	// the bytes come first and whole segments only when there are any.
	released := size(out.ReleasedBytes)
	if out.SegmentsReleased > 0 {
		released += fmt.Sprintf(" (%d segments whole)", out.SegmentsReleased)
	}
	fmt.Fprintf(e.out, "moved %d blocks (%s), released %s, fragmentation %.0f%% -> %.0f%% in %.3fs\n",
		out.BlocksMoved, size(out.BytesMoved), released,
		out.Before.FragmentationRatio*100, out.After.FragmentationRatio*100, out.DurationSeconds)
	return nil
}

type optimizeCmd struct {
	Strategy []string `name:"strategy" help:"Strategies in order: release_cached, defragment, free_expired, offload_idle."`
	Target   float64  `help:"Stop at this usage percentage."`
	Idle     float64  `help:"offload_idle: seconds unused."`
	DryRun   bool     `name:"dry-run" help:"Only say what would be done."`
}

func (o *optimizeCmd) Run(e *env) error {
	var out subjects.OptimizeReply
	if err := e.do(subjects.Optimize, subjects.OptimizeRequest{Strategies: o.Strategy, TargetUsagePercentage: o.Target, IdleSeconds: o.Idle, DryRun: o.DryRun}, &out); err != nil {
		return err
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	for _, a := range out.Actions {
		fmt.Fprintf(e.out, "%-15s %-10s %s\n", a.Strategy, size(a.BytesFreed), a.Description)
	}
	fmt.Fprintf(e.out, "usage %.1f%% -> %.1f%%, %s freed (dry run: %v)\n", out.UsagePercentageBefore, out.UsagePercentageAfter, size(out.BytesFreed), out.DryRun)
	return nil
}

type recsCmd struct {
	Apply int `help:"Send the Nth recommendation's suggested action (1 is the first)."`
}

func (r *recsCmd) Run(e *env) error {
	if r.Apply > 0 {
		return r.apply(e)
	}
	// Without --device, every device of the fleet.
	replies, err := e.perDevice(subjects.OptimizationRecs, subjects.OptimizationRecsRequest{})
	if err != nil {
		return err
	}
	devs := slices.Sorted(maps.Keys(replies))
	all := map[string]subjects.OptimizationRecsReply{}
	for _, dev := range devs {
		var out subjects.OptimizationRecsReply
		if err := json.Unmarshal(replies[dev], &out); err != nil {
			return err
		}
		all[dev] = out
	}
	if e.cli.JSON {
		if e.cli.Device != "" {
			return e.printJSON(all[e.cli.Device])
		}
		return e.printJSON(all)
	}
	t := e.table("Device", "#", "Severity", "Savings", "Recommendation", "Action")
	rows := 0
	for _, dev := range devs {
		for i, rec := range all[dev].Recommendations {
			t.AppendRow(table.Row{dev, i + 1, rec.Severity, size(rec.EstimatedSavingsBytes), rec.Message, string(rec.SuggestedAction.Op) + " " + mustJSON(rec.SuggestedAction.Data)})
			rows++
		}
	}
	if rows > 0 {
		t.Render()
	}
	for _, dev := range devs {
		out := all[dev]
		what := fmt.Sprintf("%d recommendations", len(out.Recommendations))
		if len(out.Recommendations) == 0 {
			what = "nothing to recommend"
		}
		fmt.Fprintf(e.out, "%s: %s (pressure %s, %.0f%% used)\n", dev, what, out.Level, out.UsageRatio*100)
	}
	if rows > 0 && e.cli.Device == "" {
		fmt.Fprintln(e.out, "memctl -d DEVICE recs --apply N sends one")
	}
	return nil
}

// apply sends the device's Nth recommendation's suggested action.
func (r *recsCmd) apply(e *env) error {
	var out subjects.OptimizationRecsReply
	if err := e.do(subjects.OptimizationRecs, subjects.OptimizationRecsRequest{}, &out); err != nil {
		return err
	}
	if r.Apply > len(out.Recommendations) {
		return usageErr("--apply %d: there are %d recommendations", r.Apply, len(out.Recommendations))
	}
	act := out.Recommendations[r.Apply-1].SuggestedAction
	var reply json.RawMessage
	if err := e.do(act.Op, act.Data, &reply); err != nil {
		return err
	}
	if e.cli.JSON {
		return e.printJSON(reply)
	}
	fmt.Fprintf(e.out, "sent %s %s: %s\n", act.Op, mustJSON(act.Data), reply)
	return nil
}

type modelsCmd struct{}

func (modelsCmd) Run(e *env) error {
	// Without --device, every device of the fleet.
	replies, err := e.perDevice(subjects.ModelStatus, subjects.ModelStatusRequest{})
	if err != nil {
		return err
	}
	devs := slices.Sorted(maps.Keys(replies))
	all := map[string]subjects.ModelStatusReply{}
	for _, dev := range devs {
		var out subjects.ModelStatusReply
		if err := json.Unmarshal(replies[dev], &out); err != nil {
			return err
		}
		all[dev] = out
	}
	if e.cli.JSON {
		if e.cli.Device != "" {
			return e.printJSON(all[e.cli.Device])
		}
		return e.printJSON(all)
	}
	models := 0
	for _, dev := range devs {
		models += len(all[dev].Models)
	}
	if models == 0 {
		fmt.Fprintln(e.out, "no models: allocations made with --model show here")
		return nil
	}
	t := e.table("Device", "Model", "Resident", "Offloaded", "Allocations", "Persistent", "Last used")
	for _, dev := range devs {
		for _, m := range all[dev].Models {
			t.AppendRow(table.Row{dev, m.ModelID, size(m.ResidentBytes), size(m.OffloadedBytes), m.Allocations, m.PersistentAllocations, m.LastUsedAt.Format(time.RFC3339)})
		}
	}
	t.Render()
	return nil
}

// offloadCmd and restoreCmd are model_optimize: move the least recently
// used models to pinned host memory until usage is at the target, or bring
// them back.
type offloadCmd struct {
	Target float64 `default:"0" help:"Stop once device usage is at or below this percentage (0: every model that can move)."`
	Model  string  `help:"Only this model."`
	Force  bool    `help:"Include persistent allocations."`
}

func (o *offloadCmd) Run(e *env) error {
	return e.modelOptimize(subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeOffload, TargetUsagePercentage: &o.Target, ModelID: o.Model, Force: o.Force})
}

type restoreCmd struct {
	Model string `help:"Only this model."`
}

func (r *restoreCmd) Run(e *env) error {
	return e.modelOptimize(subjects.ModelOptimizeRequest{OptimizationType: subjects.OptimizeRestore, ModelID: r.Model})
}

// modelOptimize sends req and prints what moved, how fast, and where the
// time went.
func (e *env) modelOptimize(req subjects.ModelOptimizeRequest) error {
	var out subjects.ModelOptimizeReply
	if err := e.do(subjects.ModelOptimize, req, &out); err != nil {
		return err
	}
	if e.cli.JSON {
		return e.printJSON(out)
	}
	for _, m := range out.OptimizationDetails.Models {
		fmt.Fprintf(e.out, "%-10s %-24s %s in %s\n", m.Action, m.ModelID, size(m.Bytes), plural(len(m.AllocationIDs), "allocation"))
	}
	for _, m := range out.OptimizationDetails.SkippedModels {
		fmt.Fprintf(e.out, "%-10s %-24s %s\n", "skipped", m.ModelID, m.Reason)
	}
	fmt.Fprintln(e.out, out.Message)
	if out.BytesMoved > 0 {
		fmt.Fprintf(e.out, "moved %s in %.3fs at %s/s (copy %s/s: setup %.3fs, copy %.3fs, release %.3fs)\n",
			size(out.BytesMoved), out.EstimatedDurationSeconds, size(int64(out.ThroughputBytesPerSecond)), size(int64(out.CopyThroughputBytesPerSecond)),
			out.SetupSeconds, out.CopySeconds, out.ReleaseSeconds)
	}
	return nil
}

type reqCmd struct {
	Op     string `arg:"" help:"Operation, e.g. get_usage."`
	Target string `arg:"" name:"device" help:"Device id, or all for a fleet request."`
	Data   string `arg:"" optional:"" default:"{}" help:"The request's data as JSON."`
}

func (r *reqCmd) Run(e *env) error {
	op := subjects.Op(r.Op)
	if !op.Valid() {
		return usageErr("unknown operation %q", r.Op)
	}
	if !json.Valid([]byte(r.Data)) {
		return usageErr("data is not JSON: %s", r.Data)
	}
	if r.Target == subjects.Fleet && !slices.Contains(subjects.FleetOps(), op) {
		return usageErr("%s acts on one device: name it (all is for the fleet's reads: %v)", op, subjects.FleetOps())
	}
	body := []byte(`{"data":` + r.Data + `}`)
	ctx, cancel := contextWithTimeout(e)
	defer cancel()
	msg, err := e.nc.RequestWithContext(ctx, subjects.Request(op, r.Target), body)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", op, r.Target, noResponders(err, r.Target))
	}
	fmt.Fprintln(e.out, string(msg.Data))
	var reply subjects.Reply
	if err := json.Unmarshal(msg.Data, &reply); err == nil && !reply.Success {
		return &exitError{exitWorkerError, reply.Err()}
	}
	return nil
}

func (e *env) table(header ...any) table.Writer {
	t := table.NewWriter()
	t.SetOutputMirror(e.out)
	t.SetStyle(table.StyleLight)
	t.AppendHeader(table.Row(header))
	return t
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
