package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

type watchCmd struct {
	Count       int  `help:"Exit after this many events (0: until interrupted)."`
	Allocations bool `name:"allocations" help:"Follow allocation events instead: leases expired, reservations exceeded, and each handoff (reclaim requested, completed, failed, restored) as a timeline."`
}

// watchLine is one event as --json prints it: the event's time and id, and
// its data.
type watchLine struct {
	Time time.Time `json:"time"`
	ID   string    `json:"id"`
	events.Pressure
}

func (w *watchCmd) Run(e *env) error {
	if w.Allocations {
		return w.allocations(e)
	}
	subject := subjects.AllPressureEvents
	if e.cli.Device != "" {
		subject = subjects.PressureEvents(e.cli.Device)
	}
	ch, stop, err := e.subscribe(subject)
	if err != nil {
		return err
	}
	defer stop()
	latest := map[string]watchLine{}
	life := make(chan *nats.Msg, 64)
	if !e.cli.JSON {
		fmt.Fprintf(e.out, "watching %s (Ctrl-C to stop)\n", subject)
		// The table starts with every device's level now, then follows
		// the changes; workers starting and stopping are told too.
		lsub, err := e.nc.ChanSubscribe(subjects.AllLifecycleEvents, life)
		if err != nil {
			return err
		}
		defer lsub.Unsubscribe()
		e.currentLevels(latest)
		if len(latest) > 0 {
			e.renderWatch(latest)
		}
	}
	for seen := 0; w.Count == 0 || seen < w.Count; {
		var msg *nats.Msg
		select {
		case <-e.ctx.Done():
			return nil
		case lm := <-life:
			if e2, l, err := events.DecodeLifecycle(lm); err == nil {
				what := "started"
				if e2.Type() == events.TypeWorkerStopped {
					what = "stopped"
				}
				fmt.Fprintf(e.out, "%s worker %s on node %s (instance %s)\n", l.At.Local().Format("15:04:05"), what, l.Node, l.Instance)
			}
			continue
		case msg = <-ch:
		}
		ev, p, err := events.Decode(msg)
		if err != nil {
			fmt.Fprintf(e.out, "undecodable event on %s: %v\n", msg.Subject, err)
			continue
		}
		seen++
		line := watchLine{Time: ev.Time(), ID: ev.ID(), Pressure: p}
		if e.cli.JSON {
			b, _ := json.Marshal(line)
			fmt.Fprintln(e.out, string(b))
			continue
		}
		latest[p.DeviceID] = line
		e.renderWatch(latest)
	}
	return nil
}

// currentLevels fills latest with each device's pressure now, from every
// node (or the --device one).
func (e *env) currentLevels(latest map[string]watchLine) {
	res, err := e.client.Fleet(e.ctx, subjects.GetPressure, nil, 300*time.Millisecond)
	if err != nil {
		return
	}
	for _, n := range res.Nodes {
		for _, d := range n.Devices {
			var p subjects.Pressure
			if !d.Success || json.Unmarshal(d.Data, &p) != nil || (e.cli.Device != "" && d.DeviceID != e.cli.Device) {
				continue
			}
			p.DeviceID = d.DeviceID
			latest[d.DeviceID] = watchLine{Time: p.SampledAt, Pressure: events.Pressure{PressureFigures: p.PressureFigures, Node: n.Node, Reason: "current"}}
		}
	}
}

// renderWatch redraws the per-device view; on a terminal it replaces the
// previous one.
func (e *env) renderWatch(latest map[string]watchLine) {
	if e.tty {
		fmt.Fprint(e.out, "\033[H\033[2J")
	}
	ids := make([]string, 0, len(latest))
	for id := range latest {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	t := e.table("Device", "Level", "Usage", "Used / Total", "Since", "Reason")
	for _, id := range ids {
		l := latest[id]
		level := e.level(l.Level)
		if l.PreviousLevel != "" && l.PreviousLevel != l.Level {
			level = string(l.PreviousLevel) + " → " + level
		}
		t.AppendRow(table.Row{id, level, bar(l.UsageRatio, 20) + fmt.Sprintf(" %3.0f%%", l.UsageRatio*100),
			size(l.UsedBytes) + " / " + size(l.TotalBytes), l.Time.Local().Format("15:04:05"), l.Reason})
	}
	t.Render()
	if !e.tty {
		fmt.Fprintln(e.out, strings.Repeat("─", 10))
	}
}

// allocations prints the allocation events one line each, as they come
// (--json: the event's type, time and data).
func (w *watchCmd) allocations(e *env) error {
	subject := subjects.AllAllocationEvents
	if e.cli.Device != "" {
		subject = subjects.DeviceAllocationEvents(e.cli.Device)
	}
	ch, stop, err := e.subscribe(subject)
	if err != nil {
		return err
	}
	defer stop()
	if !e.cli.JSON {
		fmt.Fprintf(e.out, "watching %s (Ctrl-C to stop)\n", subject)
	}
	for seen := 0; w.Count == 0 || seen < w.Count; seen++ {
		var msg *nats.Msg
		select {
		case <-e.ctx.Done():
			return nil
		case msg = <-ch:
		}
		typ, a, err := events.DecodeAllocation(msg)
		if err != nil {
			fmt.Fprintf(e.out, "undecodable event on %s: %v\n", msg.Subject, err)
			continue
		}
		if e.cli.JSON {
			b, _ := json.Marshal(struct {
				Type string            `json:"type"`
				Data events.Allocation `json:"data"`
			}{typ, a})
			fmt.Fprintln(e.out, string(b))
			continue
		}
		fmt.Fprintln(e.out, allocationLine(typ, a))
	}
	return nil
}

// allocationLine says what an allocation event tells, in one line.
func allocationLine(typ string, a events.Allocation) string {
	name := strings.TrimSuffix(strings.TrimPrefix(typ, "io.memworker."), ".v1")
	who := a.Tenant
	if who == "" {
		who = "operator"
	}
	line := fmt.Sprintf("%s %-18s %s %s (%s, %s)", a.ObservedAt.Local().Format("15:04:05.000"), name, a.DeviceID, a.AllocationID, who, size(a.SizeBytes))
	switch typ {
	case events.TypeReclaimRequested:
		line += fmt.Sprintf(": priority %d asked for %s by a waiter of priority %d", a.Priority, size(a.BytesWanted), a.WaiterPriority)
		if a.Deadline != nil {
			line += ", deadline " + a.Deadline.Local().Format("15:04:05")
		}
	case events.TypeReclaimCompleted:
		line += fmt.Sprintf(": released %s in %.3f s, verified %.3f s later", size(a.BytesReleased), a.ReleaseSeconds, a.VerifySeconds)
	case events.TypeReclaimFailed:
		line += ": " + a.Reason
	case events.TypeReservationExceeded:
		line += fmt.Sprintf(": pid %d uses %s", a.PID, size(a.ObservedBytes))
	}
	if n := len(a.AllocationIDs); n > 1 {
		line += fmt.Sprintf(" and %d more", n-1)
	}
	return line
}

// subscribe subscribes to subject, once the server has the subscription, and
// returns its messages and the way to stop.
func (e *env) subscribe(subject string) (<-chan *nats.Msg, func(), error) {
	ch := make(chan *nats.Msg, 256)
	sub, err := e.nc.ChanSubscribe(subject, ch)
	if err != nil {
		return nil, nil, err
	}
	if err := e.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, nil, err
	}
	return ch, func() { _ = sub.Unsubscribe() }, nil
}
