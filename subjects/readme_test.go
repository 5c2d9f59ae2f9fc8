package subjects_test

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

// TestReadmeCSharpRecordsMatchTheWire reads the C# records the README
// declares for NATS.Net users and checks each property, snake_cased as the
// README's JsonSerializerContext writes it, against the JSON keys of the
// Go type on the wire: a renamed or misspelled field fails here, not in a
// user's service.
func TestReadmeCSharpRecordsMatchTheWire(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	wire := map[string]any{
		"MemoryRequest": subjects.Envelope{},
		"MemoryReply":   subjects.Reply{},
		"AllocateData":  subjects.AllocateRequest{},
		"RenewData":     subjects.RenewRequest{},
		"Allocation":    subjects.Allocation{},
		"FleetReply":    subjects.FleetReply{},
		"FleetDevice":   subjects.FleetDevice{},
		"PressureEvent": events.Pressure{},
		// CloudEvents' structured JSON (the spec's attribute names).
		"CloudEvent": struct {
			ID     string `json:"id"`
			Type   string `json:"type"`
			Source string `json:"source"`
			Time   string `json:"time"`
			Data   any    `json:"data"`
		}{},
		"Empty": struct{}{},
	}
	records := regexp.MustCompile(`public record (\w+)(?:<\w+>)?\(([^)]*)\);`).FindAllSubmatch(readme, -1)
	seen := map[string]bool{}
	for _, r := range records {
		name := string(r[1])
		seen[name] = true
		goType, ok := wire[name]
		if !ok {
			t.Errorf("README declares C# record %s, which this test does not know the wire type of", name)
			continue
		}
		keys := jsonKeys(reflect.TypeOf(goType))
		for _, param := range strings.Split(string(r[2]), ",") {
			param, _, _ = strings.Cut(param, "=")
			fields := strings.Fields(param)
			if len(fields) == 0 {
				continue
			}
			key := snake(fields[len(fields)-1])
			if !keys[key] {
				t.Errorf("C# record %s: property %s is %q on the wire, which %T has no key for", name, fields[len(fields)-1], key, goType)
			}
		}
	}
	for name := range wire {
		if !seen[name] {
			t.Errorf("README no longer declares C# record %s", name)
		}
	}
}

// jsonKeys lists the JSON keys of a struct type, embedded structs included.
func jsonKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && tag == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k := range jsonKeys(ft) {
				keys[k] = true
			}
			continue
		}
		if tag != "" && tag != "-" {
			keys[tag] = true
		}
	}
	return keys
}

// snake is System.Text.Json's SnakeCaseLower for the names used here.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
