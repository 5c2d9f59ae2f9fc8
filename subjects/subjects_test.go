package subjects_test

import (
	"testing"

	"github.com/memworker/memworker/subjects"
)

func TestCatalogueHasTheSeedsFifteenOpsRenewAndResize(t *testing.T) {
	ops := subjects.Ops()
	if len(ops) != 17 || ops[15] != subjects.Renew || ops[16] != subjects.Resize {
		t.Fatalf("%d ops, want the seed's 15, renew and resize", len(ops))
	}
	seen := map[subjects.Op]bool{}
	for _, op := range ops {
		if seen[op] || !op.Valid() || !subjects.ValidToken(string(op)) {
			t.Errorf("op %q duplicated or not a subject token", op)
		}
		seen[op] = true
		if got, ok := subjects.ParseAction(op.Action()); !ok || got != op {
			t.Errorf("ParseAction(%q) = %q, %v", op.Action(), got, ok)
		}
	}
	for _, events := range []string{"pressure", "allocation", "lifecycle"} {
		if subjects.Op(events).Valid() {
			t.Errorf("%s must not be an op: memory.%s.<device> carries events", events, events)
		}
	}
}

func TestSubjectsAndQueueGroups(t *testing.T) {
	tests := []struct{ got, want string }{
		{subjects.Request(subjects.Allocate, "node1-gpu0"), "memory.allocate.node1-gpu0"},
		{subjects.FleetRequest(subjects.GetStatus), "memory.get_status.all"},
		{subjects.PressureEvents("node1-gpu0"), "memory.pressure.node1-gpu0"},
		{subjects.AllPressureEvents, "memory.pressure.>"},
		{subjects.QueueGroup("node1-gpu0"), "memory-node1-gpu0"},
		{subjects.NodeQueueGroup("node1"), "memory-node-node1"},
		{subjects.DeviceID("node1", 3), "node1-gpu3"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		subject string
		op      subjects.Op
		dev     string
		ok      bool
	}{
		{"memory.allocate.node1-gpu0", subjects.Allocate, "node1-gpu0", true},
		{"memory.get_status.all", subjects.GetStatus, "all", true},
		{"memory.pressure.node1-gpu0", "", "", false},
		{"memory.explode.node1-gpu0", "", "", false},
		{"memory.allocate", "", "", false},
		{"memory.allocate.a.b", "", "", false},
		{"other.allocate.node1-gpu0", "", "", false},
		{"memory.allocate.bad*id", "", "", false},
	}
	for _, tt := range tests {
		op, dev, err := subjects.Parse(tt.subject)
		if (err == nil) != tt.ok || op != tt.op || dev != tt.dev {
			t.Errorf("Parse(%q) = %q, %q, %v", tt.subject, op, dev, err)
		}
	}
}

func TestSanitizeNode(t *testing.T) {
	tests := map[string]string{
		"gpu-host-01":         "gpu-host-01",
		"gpu01.cluster.local": "gpu01",
		"weird host!name":     "weird-host-name",
		"":                    "node",
		"all":                 "node",
		"UPPER_and_lower-09":  "UPPER_and_lower-09",
		"ünïcode":             "--n--code",
	}
	for in, want := range tests {
		got := subjects.SanitizeNode(in)
		if got != want || !subjects.ValidToken(got) {
			t.Errorf("SanitizeNode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEveryOpHasItsPayloads(t *testing.T) {
	for _, op := range subjects.Ops() {
		if req, reply := op.Payloads(); req == nil || reply == nil {
			t.Errorf("%s has no payload types", op)
		}
	}
}
