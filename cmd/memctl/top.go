package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

// topCmd is a live view of a host or the fleet, as nvtop is of GPUs: per
// device a bar of who holds its memory, the waiters, the pressure level,
// and the last events. Not on a terminal it prints plain lines.
type topCmd struct {
	Interval time.Duration `default:"1s" help:"How often to read the devices."`
	Count    int           `help:"Not on a terminal: print this many snapshots (0: until interrupted)."`
}

// topDevice is one device as top shows it.
type topDevice struct {
	subjects.StatusReply
	tenants map[string]int64 // bytes allocated per tenant, and model ("operator/llama")
}

// segment is a piece of a device's bar.
type segment struct {
	name  string
	bytes int64
}

// segments splits the device's memory: each tenant's allocations, other
// processes, the worker's cache, what reservations promise, free.
func (d topDevice) segments() []segment {
	u := d.Usage
	var out []segment
	for _, t := range slices.Sorted(maps.Keys(d.tenants)) {
		out = append(out, segment{t, d.tenants[t]})
	}
	out = append(out, segment{"other processes", u.OtherBytes}, segment{"cached", u.CachedBytes},
		segment{"promised", u.ReservationUnusedBytes})
	var held int64
	for _, s := range out {
		held += s.bytes
	}
	return append(out, segment{"free", max(u.TotalBytes-held, 0)})
}

// snapshot reads every device (or --device): status, and the allocations
// for the split by tenant.
func (e *env) snapshot() ([]topDevice, error) {
	statuses, err := e.perDevice(subjects.GetStatus, subjects.StatusRequest{})
	if err != nil {
		return nil, err
	}
	allocs, err := e.perDevice(subjects.GetAllocations, subjects.AllocationsRequest{Limit: subjects.MaxPageLimit})
	if err != nil {
		return nil, err
	}
	var out []topDevice
	for dev, raw := range statuses {
		d := topDevice{tenants: map[string]int64{}}
		if err := json.Unmarshal(raw, &d.StatusReply); err != nil {
			return nil, err
		}
		var page subjects.AllocationsReply
		if err := json.Unmarshal(allocs[dev], &page); err == nil {
			for _, a := range page.Allocations {
				if a.Offloaded || a.AllocationType == subjects.Reservation {
					continue // host memory; a reservation shows as its process and what it promises
				}
				key := cmp.Or(a.Tenant, "operator")
				if a.ModelID != "" {
					key += "/" + a.ModelID
				}
				d.tenants[key] += a.SizeBytes
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// The sort orders top cycles through with "s".
var topSorts = []struct {
	name string
	less func(a, b topDevice) int
}{
	{"device", func(a, b topDevice) int { return strings.Compare(a.Device.DeviceID, b.Device.DeviceID) }},
	{"pressure", func(a, b topDevice) int { return cmp.Compare(b.Usage.PressureRatio, a.Usage.PressureRatio) }},
	{"usage", func(a, b topDevice) int { return cmp.Compare(b.Usage.UsageRatio, a.Usage.UsageRatio) }},
	{"waiting", func(a, b topDevice) int { return cmp.Compare(b.Usage.WaitingRequests, a.Usage.WaitingRequests) }},
}

// topModel is top's state (bubbletea's Elm architecture: Update takes
// messages, View draws).
type topModel struct {
	fetch    func() ([]topDevice, error)
	interval time.Duration
	devices  []topDevice
	err      error
	sortBy   int
	cursor   int
	events   []string
	width    int
}

type (
	snapshotMsg struct {
		devices []topDevice
		err     error
	}
	tickMsg  struct{}
	eventMsg string
)

const topEvents = 8

func (m topModel) Init() tea.Cmd { return m.read }

func (m topModel) read() tea.Msg {
	d, err := m.fetch()
	return snapshotMsg{d, err}
}

func (m topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		case "s":
			picked := m.picked()
			m.sortBy = (m.sortBy + 1) % len(topSorts)
			m.sort()
			m.pick(picked)
		case "down", "j":
			m.cursor = min(m.cursor+1, max(len(m.devices)-1, 0))
		case "up", "k":
			m.cursor = max(m.cursor-1, 0)
		}
	case tea.WindowSizeMsg:
		m.width = msg.Width
	case snapshotMsg:
		m.err = msg.err
		if msg.err == nil {
			picked := m.picked()
			m.devices = msg.devices
			m.sort()
			m.pick(picked)
		}
		return m, tea.Tick(m.interval, func(time.Time) tea.Msg { return tickMsg{} })
	case tickMsg:
		return m, m.read
	case eventMsg:
		m.events = append(m.events, string(msg))
		if len(m.events) > topEvents {
			m.events = m.events[len(m.events)-topEvents:]
		}
	}
	return m, nil
}

func (m *topModel) sort() {
	slices.SortStableFunc(m.devices, func(a, b topDevice) int {
		return cmp.Or(topSorts[m.sortBy].less(a, b), strings.Compare(a.Device.DeviceID, b.Device.DeviceID))
	})
}

// pick moves the cursor to device id, where it still is.
func (m *topModel) pick(id string) {
	for i, d := range m.devices {
		if d.Device.DeviceID == id {
			m.cursor = i
		}
	}
	m.cursor = min(m.cursor, max(len(m.devices)-1, 0))
}

func (m topModel) picked() string {
	if m.cursor < len(m.devices) {
		return m.devices[m.cursor].Device.DeviceID
	}
	return ""
}

// The bar's look per segment: tenants in turn, then the fixed kinds.
var (
	tenantStyles = []lipgloss.Style{
		lipgloss.NewStyle().Foreground(lipgloss.Color("33")), lipgloss.NewStyle().Foreground(lipgloss.Color("35")),
		lipgloss.NewStyle().Foreground(lipgloss.Color("208")), lipgloss.NewStyle().Foreground(lipgloss.Color("141")),
	}
	kindGlyphs = map[string]string{"other processes": "▓", "cached": "▒", "promised": "░", "free": "·"}
	bold       = lipgloss.NewStyle().Bold(true)
	faint      = lipgloss.NewStyle().Faint(true)
)

func (m topModel) View() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %d devices, sorted by %s   s: sort  ↑↓: pick  q: quit\n\n", bold.Render("memctl top"),
		len(m.devices), topSorts[m.sortBy].name)
	if m.err != nil {
		fmt.Fprintf(&b, "reading the devices: %v\n\n", m.err)
	}
	width := 50
	if m.width > 30 {
		width = min(m.width-10, 100)
	}
	for i, d := range m.devices {
		mark := "  "
		if i == m.cursor {
			mark = "▶ "
		}
		u := d.Usage
		fmt.Fprintf(&b, "%s%s  %s  pressure %s %.0f%%  used %s / %s  waiting %d (%s)\n", mark, bold.Render(d.Device.DeviceID),
			d.Device.Name, d.Pressure.Level, u.PressureRatio*100, size(u.UsedBytes), size(u.TotalBytes),
			u.WaitingRequests, size(u.WaitingBytes))
		segs := d.segments()
		fmt.Fprintf(&b, "  %s\n", drawBar(segs, u.TotalBytes, width))
		if i == m.cursor {
			var legend []string
			for j, s := range segs {
				if s.bytes > 0 {
					legend = append(legend, glyph(s.name, j).Render(glyphOf(s.name))+" "+s.name+" "+size(s.bytes))
				}
			}
			fmt.Fprintf(&b, "  %s\n", strings.Join(legend, "  "))
		}
		b.WriteString("\n")
	}
	b.WriteString(bold.Render("last events") + "\n")
	if len(m.events) == 0 {
		b.WriteString(faint.Render("  none yet") + "\n")
	}
	for _, e := range m.events {
		b.WriteString("  " + e + "\n")
	}
	return b.String()
}

func glyphOf(name string) string {
	if g, ok := kindGlyphs[name]; ok {
		return g
	}
	return "█"
}

func glyph(name string, i int) lipgloss.Style {
	if _, ok := kindGlyphs[name]; ok {
		return lipgloss.NewStyle()
	}
	return tenantStyles[i%len(tenantStyles)]
}

// drawBar draws segs, scaled to width cells of total bytes.
func drawBar(segs []segment, total int64, width int) string {
	if total <= 0 {
		return strings.Repeat("?", width)
	}
	var b strings.Builder
	used, acc := 0, int64(0)
	for i, s := range segs {
		acc += s.bytes
		end := int(float64(acc) / float64(total) * float64(width))
		if i == len(segs)-1 {
			end = width
		}
		end = min(max(end, used), width)
		if n := end - used; n > 0 {
			b.WriteString(glyph(s.name, i).Render(strings.Repeat(glyphOf(s.name), n)))
			used = end
		}
	}
	return b.String()
}

// plainLine is a device in one line, for a pipe.
func plainLine(d topDevice) string {
	u := d.Usage
	var parts []string
	for _, s := range d.segments() {
		if s.bytes > 0 {
			parts = append(parts, s.name+"="+size(s.bytes))
		}
	}
	return fmt.Sprintf("%s %s pressure=%.0f%% used=%s/%s waiting=%d %s", d.Device.DeviceID, d.Pressure.Level,
		u.PressureRatio*100, size(u.UsedBytes), size(u.TotalBytes), u.WaitingRequests, strings.Join(parts, " "))
}

func (c *topCmd) Run(e *env) error {
	if c.Interval <= 0 {
		return usageErr("--interval must be positive")
	}
	if !e.tty {
		for i := 0; c.Count == 0 || i < c.Count; i++ {
			if i > 0 {
				select {
				case <-e.ctx.Done():
					return nil
				case <-time.After(c.Interval):
				}
			}
			devs, err := e.snapshot()
			if err != nil {
				return err
			}
			m := topModel{devices: devs}
			m.sort()
			fmt.Fprintf(e.out, "%s\n", time.Now().Format("15:04:05"))
			for _, d := range m.devices {
				fmt.Fprintln(e.out, plainLine(d))
			}
		}
		return nil
	}
	p := tea.NewProgram(topModel{fetch: e.snapshot, interval: c.Interval}, tea.WithAltScreen(), tea.WithContext(e.ctx),
		tea.WithOutput(e.out))
	// Events as they come: pressure and allocations of the device or all.
	pressure, allocation := subjects.AllPressureEvents, subjects.AllAllocationEvents
	if e.cli.Device != "" {
		pressure, allocation = subjects.PressureEvents(e.cli.Device), subjects.DeviceAllocationEvents(e.cli.Device)
	}
	for _, subject := range []string{pressure, allocation} {
		sub, err := e.nc.Subscribe(subject, func(msg *nats.Msg) {
			if line, ok := eventLine(msg); ok {
				p.Send(eventMsg(line))
			}
		})
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
	}
	_, err := p.Run()
	if err != nil && e.ctx.Err() != nil {
		return nil // Ctrl-C
	}
	return err
}

// eventLine says what a pressure or allocation event tells, in one line.
func eventLine(msg *nats.Msg) (string, bool) {
	if subjects.IsAllocationEvent(msg.Subject) {
		typ, a, err := events.DecodeAllocation(msg)
		return allocationLine(typ, a), err == nil
	}
	ev, p, err := events.Decode(msg)
	if err != nil {
		return "", false
	}
	return fmt.Sprintf("%s pressure           %s %s → %s at %.0f%% (%s)", ev.Time().Local().Format("15:04:05.000"), p.DeviceID,
		p.PreviousLevel, p.Level, p.PressureRatio*100, p.Reason), true
}
