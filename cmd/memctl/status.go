package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/jedib0t/go-pretty/v6/text"

	"github.com/memworker/memworker/subjects"
)

type statusCmd struct {
	All bool `help:"Every device of every node (a fleet request)."`
}

func (s *statusCmd) Run(e *env) error {
	var rows []subjects.StatusReply
	nodes := 0
	if s.All || e.cli.Device == "" {
		res, err := e.client.Fleet(e.ctx, subjects.GetStatus, subjects.StatusRequest{IncludeFragmentation: true}, 300*time.Millisecond)
		if err != nil {
			return err
		}
		nodes = len(res.Nodes)
		for _, n := range res.Nodes {
			for _, d := range n.Devices {
				var st subjects.StatusReply
				if d.Success && json.Unmarshal(d.Data, &st) == nil {
					rows = append(rows, st)
				} else {
					rows = append(rows, subjects.StatusReply{Device: subjects.DeviceInfo{DeviceID: d.DeviceID, Node: n.Node, Name: string(d.ErrorCode)}})
				}
			}
		}
		if nodes == 0 {
			return &exitError{exitUnreachable, fmt.Errorf("no worker answered on %s", subjects.FleetRequest(subjects.GetStatus))}
		}
	} else {
		var st subjects.StatusReply
		if err := e.do(subjects.GetStatus, subjects.StatusRequest{IncludeFragmentation: true}, &st); err != nil {
			return err
		}
		rows = append(rows, st)
	}
	if e.cli.JSON {
		return e.printJSON(rows)
	}
	t := table.NewWriter()
	t.SetOutputMirror(e.out)
	t.SetStyle(table.StyleLight)
	t.AppendHeader(table.Row{"Device", "Name", "Used / Total", "Usage", "Available", "Reserved", "Allocated", "Promised", "Waiting", "Frag", "Pressure", "Allocs"})
	for _, st := range rows {
		u := st.Usage
		frag := "-"
		if st.Fragmentation != nil {
			frag = fmt.Sprintf("%.0f%%", st.Fragmentation.FragmentationRatio*100)
		}
		t.AppendRow(table.Row{
			st.Device.DeviceID, st.Device.Name,
			size(u.UsedBytes) + " / " + size(u.TotalBytes),
			bar(u.UsageRatio, 20) + fmt.Sprintf(" %3.0f%%", u.UsagePercentage),
			size(u.AvailableBytes), size(u.ReservedBytes), size(u.AllocatedBytes),
			size(u.ReservationUnusedBytes), fmt.Sprintf("%d (%s)", u.WaitingRequests, size(u.WaitingBytes)), frag,
			fmt.Sprintf("%s %.0f%%", e.level(st.Pressure.Level), u.PressureRatio*100), st.AllocationCount,
		})
	}
	t.Render()
	printPinnedPools(e, rows)
	if nodes > 0 {
		fmt.Fprintf(e.out, "%s, %s\n", plural(nodes, "node"), plural(len(rows), "device"))
	}
	return nil
}

// printPinnedPools prints each node's pinned host memory once.
func printPinnedPools(e *env, rows []subjects.StatusReply) {
	seen := map[string]bool{}
	for _, st := range rows {
		p, node := st.Usage.PinnedPool, st.Device.Node
		if p == nil || seen[node] {
			continue
		}
		seen[node] = true
		limit := "no cap"
		if p.MaxBytes > 0 {
			limit = "cap " + size(p.MaxBytes)
		}
		ahead := ""
		if p.AheadBytes > 0 {
			ahead = fmt.Sprintf(", %s of it pinned ahead of an offload", size(p.AheadBytes))
		}
		fmt.Fprintf(e.out, "%s pinned host memory: %s held (%s in use, %s cached%s; %s pinned at start; %s), %.0f%% of requests reused it\n",
			node, size(p.PinnedBytes), size(p.InUseBytes), size(p.CachedBytes), ahead, size(p.PrepinBytes), limit, p.HitRatio*100)
	}
}

// bar draws ratio as a bar of n cells.
func bar(ratio float64, n int) string {
	full := int(ratio*float64(n) + 0.5)
	full = max(0, min(full, n))
	return strings.Repeat("█", full) + strings.Repeat("░", n-full)
}

func size(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

// level colours a pressure level on a terminal.
func (e *env) level(l subjects.Level) string {
	if !e.tty {
		return string(l)
	}
	switch l {
	case subjects.LevelCritical:
		return text.Colors{text.FgHiRed, text.Bold}.Sprint(l)
	case subjects.LevelWarning:
		return text.FgYellow.Sprint(l)
	case subjects.LevelNormal:
		return text.FgGreen.Sprint(l)
	}
	return string(l)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
