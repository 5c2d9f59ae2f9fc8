package main

import (
	"regexp"
	"strings"
	"testing"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/memworker/memworker/subjects"
)

func topDev(id string, pressure float64, tenants map[string]int64, u subjects.Usage) topDevice {
	u.TotalBytes, u.PressureRatio = 16*GiB, pressure
	st := subjects.StatusReply{Device: subjects.DeviceInfo{DeviceID: id, Name: "sim"}, Usage: u}
	return topDevice{StatusReply: st, tenants: tenants}
}

// TestTopModel: the view splits each device's bar by tenant, other
// processes, cache, promised and free; s sorts, ↑↓ pick (the pick follows
// its device across refreshes), events scroll, q quits.
func TestTopModel(t *testing.T) {
	m := tea.Model(topModel{})
	snap := snapshotMsg{devices: []topDevice{
		topDev("n1-gpu0", 0.2, map[string]int64{"TEAM_A": 4 * GiB}, subjects.Usage{CachedBytes: GiB}),
		topDev("n1-gpu1", 0.9, map[string]int64{"TEAM_B": 8 * GiB}, subjects.Usage{OtherBytes: 4 * GiB, ReservationUnusedBytes: 2 * GiB, WaitingRequests: 3}),
	}}
	m, _ = m.Update(snap)
	view := m.View()
	for _, want := range []string{"▶ n1-gpu0", "TEAM_A 4.0 GiB", "cached 1.0 GiB", "free 11 GiB", "sorted by device", "waiting 3"} {
		if !strings.Contains(view, want) {
			t.Errorf("view lacks %q:\n%s", want, view)
		}
	}
	// gpu1's bar: half TEAM_B, a quarter other processes, an eighth promised
	// (cells rounded down: 25, 12, 6 of 50).
	bars := regexp.MustCompile(`(?m)^  ([█▓▒░·]+)$`).FindAllStringSubmatch(view, -1)
	if len(bars) != 2 || strings.Count(bars[1][1], "█") != 25 || strings.Count(bars[1][1], "▓") != 12 || strings.Count(bars[1][1], "░") != 6 {
		t.Errorf("bars %q", bars)
	}
	m, _ = m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("s")}) // by pressure: gpu1 first, the pick stays on gpu0
	if v := m.View(); !strings.Contains(v, "sorted by pressure") || strings.Index(v, "n1-gpu1") > strings.Index(v, "n1-gpu0") || !strings.Contains(v, "▶ n1-gpu0") {
		t.Errorf("after s:\n%s", v)
	}
	m, _ = m.Update(tea.KeyMsg{Type: tea.KeyUp})
	if v := m.View(); !strings.Contains(v, "▶ n1-gpu1") || !strings.Contains(v, "TEAM_B 8.0 GiB") {
		t.Errorf("after ↑:\n%s", v)
	}
	m, _ = m.Update(snap) // a refresh keeps the pick on its device
	if v := m.View(); !strings.Contains(v, "▶ n1-gpu1") {
		t.Errorf("after a refresh:\n%s", v)
	}
	for i := range topEvents + 2 {
		m, _ = m.Update(eventMsg("event " + string(rune('a'+i))))
	}
	if v := m.View(); strings.Contains(v, "event a") || !strings.Contains(v, "event j") {
		t.Errorf("events: want the last %d:\n%s", topEvents, v)
	}
	if _, cmd := m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")}); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit")
	}
}

// TestTopPrintsLinesWhenNotATerminal: piped, top prints a snapshot per
// interval, one line per device with its split.
func TestTopPrintsLinesWhenNotATerminal(t *testing.T) {
	f := newFixture(t, 2)
	f.ok("-d", "n1-gpu1", "alloc", "256MiB", "--model", "llama")
	f.ok("-d", "n1-gpu1", "alloc", "64MiB")
	out := f.ok("top", "--count", "2", "--interval", "10ms")
	if n := strings.Count(out, "n1-gpu1 normal"); n != 2 || !strings.Contains(out, "operator/llama=256 MiB") || !strings.Contains(out, "operator=64 MiB") || !strings.Contains(out, "n1-gpu0") {
		t.Errorf("top:\n%s", out)
	}
}
