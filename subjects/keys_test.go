package subjects_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/memworker/memworker/subjects"
)

// wireTypes lists every type that travels on the wire.
var wireTypes = []any{
	subjects.Envelope{}, subjects.Reply{},
	subjects.Allocation{}, subjects.StatusRequest{}, subjects.StatusReply{},
	subjects.DeviceInfo{}, subjects.UsageRequest{}, subjects.Usage{},
	subjects.PurposeUsage{}, subjects.ProcessUsage{}, subjects.PoolStats{}, subjects.Fragmentation{},
	subjects.AllocationsRequest{}, subjects.AllocationsReply{},
	subjects.AllocateRequest{}, subjects.DeallocateRequest{}, subjects.DeallocateReply{},
	subjects.ClearRequest{}, subjects.ClearReply{}, subjects.PressureRequest{},
	subjects.Pressure{},
	subjects.DefragmentRequest{}, subjects.DefragmentReply{},
	subjects.TransferRequest{}, subjects.TransferStatus{}, subjects.GetTransferRequest{},
	subjects.OptimizeRequest{}, subjects.OptimizeReply{}, subjects.OptimizeAction{},
	subjects.ModelStatusRequest{}, subjects.ModelStatusReply{}, subjects.ModelMemory{},
	subjects.ModelOptimizeRequest{}, subjects.ModelOptimizeReply{}, subjects.OptimizationDetails{}, subjects.ModelAction{},
	subjects.AnalyticsRequest{}, subjects.AnalyticsReply{}, subjects.Sample{}, subjects.SizeBucket{}, subjects.PressureTime{},
	subjects.OptimizationRecsRequest{}, subjects.OptimizationRecsReply{}, subjects.Recommendation{}, subjects.SuggestedAction{},
	subjects.RenewRequest{}, subjects.RenewReply{}, subjects.RenewedLease{}, subjects.TenantUsage{}, subjects.SkippedModel{},
}

// TestEveryWireKeyRoundTripsThroughPascalCase walks every wire type,
// recursively, and checks each JSON key is lower snake_case and survives
// the C# side's conversion to PascalCase and back.
func TestEveryWireKeyRoundTripsThroughPascalCase(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] || typ.PkgPath() != reflect.TypeOf(subjects.Reply{}).PkgPath() {
			return
		}
		seen[typ] = true
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if key == "" || key == "-" {
				t.Errorf("%s.%s has no JSON key", typ.Name(), f.Name)
				continue
			}
			if subjects.Snake(key) != key {
				t.Errorf("%s.%s: key %q is not lower snake_case", typ.Name(), f.Name, key)
			}
			pascal := subjects.Pascal(key)
			if back := subjects.Snake(pascal); back != key {
				t.Errorf("%s.%s: %q -> %q -> %q does not round-trip", typ.Name(), f.Name, key, pascal, back)
			}
			if pascal != f.Name && !strings.EqualFold(pascal, f.Name) {
				t.Errorf("%s.%s: key %q becomes %q in C#, unlike the Go name", typ.Name(), f.Name, key, pascal)
			}
			walk(f.Type)
		}
	}
	for _, v := range wireTypes {
		walk(reflect.TypeOf(v))
	}
	if len(seen) < len(wireTypes) {
		t.Errorf("walked %d types, want at least %d", len(seen), len(wireTypes))
	}
}

func TestSnakeAndPascal(t *testing.T) {
	tests := []struct{ in, snake string }{
		{"device_id", "device_id"},
		{"DeviceId", "device_id"},
		{"deviceId", "device_id"},
		{"IpcHandle", "ipc_handle"},
		{"TTLSeconds", "ttl_seconds"},
		{"TtlSeconds", "ttl_seconds"},
		{"P99Seconds", "p99_seconds"},
		{"sizeBytes", "size_bytes"},
		{"ID", "id"},
	}
	for _, tt := range tests {
		if got := subjects.Snake(tt.in); got != tt.snake {
			t.Errorf("Snake(%q) = %q, want %q", tt.in, got, tt.snake)
		}
	}
	if got := subjects.Pascal("ipc_handle"); got != "IpcHandle" {
		t.Errorf("Pascal(ipc_handle) = %q", got)
	}
}
