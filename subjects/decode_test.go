package subjects_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/memworker/memworker/subjects"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantCode subjects.Code // "" for success
		wantMsg  string        // part of the message
		wantID   string
	}{
		{"empty body is a request without data", ``, "", "", ""},
		{"snake", `{"request_id":"r1","action":"memory.allocate","data":{"size_bytes":1}}`, "", "", "r1"},
		{"bare action", `{"request_id":"r1","action":"allocate"}`, "", "", "r1"},
		{"pascal", `{"RequestId":"r2","Action":"memory.allocate"}`, "", "", "r2"},
		{"camel", `{"requestId":"r3"}`, "", "", "r3"},
		{"unknown action", `{"action":"memory.launch"}`, subjects.CodeUnknownAction, "memory.launch", ""},
		{"other op", `{"action":"memory.clear"}`, subjects.CodeInvalidRequest, "does not match", ""},
		{"malformed", `{"request_id":`, subjects.CodeInvalidRequest, "truncated", ""},
		{"syntax", `{"request_id" 1}`, subjects.CodeInvalidRequest, "malformed JSON", ""},
		{"wrong type", `{"request_id":5}`, subjects.CodeInvalidRequest, "request_id", ""},
		{"unknown key", `{"requestid":"x","bogus":1}`, subjects.CodeInvalidRequest, "unknown field", ""},
		{"two spellings of a key", `{"RequestId":"r","Data":{"SizeBytes":1,"size_bytes":2}}`, subjects.CodeInvalidRequest, `key data.size_bytes appears twice (as "SizeBytes" and "size_bytes")`, ""},
		{"two spellings deeper", `{"Data":{"Items":[{"A":1},{"a":1,"A":2}]}}`, subjects.CodeInvalidRequest, "key data.items.1.a appears twice", ""},
		{"one spelling twice", `{"RequestId":"r1","RequestId":"r2"}`, subjects.CodeInvalidRequest, "key request_id appears twice", ""},
		{"snake key twice", `{"data":{"device_id":"COPY","device_id":"n-gpu0"}}`, subjects.CodeInvalidRequest, "key data.device_id appears twice", ""},
		{"escaped key", `{"Request\u0049d":"r3"}`, subjects.CodeInvalidRequest, "is not a field name", ""},
		{"folded key", `{"data":{"ſize_bytes":1}}`, subjects.CodeInvalidRequest, "is not a field name", ""},
		{"upper snake key", `{"REQUEST_ID":"r"}`, subjects.CodeInvalidRequest, "is not a field name", ""},
		{"long key", `{"` + strings.Repeat("a", subjects.MaxKeyLen+1) + `":1}`, subjects.CodeInvalidRequest, "is not a field name", ""},
		{"too many keys", `{"data":{` + manyKeys(subjects.MaxKeysPerObject+1) + `}}`, subjects.CodeInvalidRequest, "at data has more than", ""},
		{"acronym", `{"RequestID":"r4"}`, "", "", "r4"},
		{"pascal with stray close", `{"RequestId":"r"}}`, subjects.CodeInvalidRequest, "", ""},
		{"trailing data", `{"request_id":"x"} {}`, subjects.CodeInvalidRequest, "malformed JSON", ""},
		{"two values", `{}{}`, subjects.CodeInvalidRequest, "malformed JSON", ""},
		{"not an object", `[1]`, subjects.CodeInvalidRequest, "expected a JSON object", ""},
		{"long id", `{"request_id":"` + strings.Repeat("a", subjects.MaxRequestIDLen+1) + `"}`, subjects.CodeInvalidRequest, "request_id", ""},
		{"control character in id", `{"request_id":"a\u0000b"}`, subjects.CodeInvalidRequest, "not printable", ""},
		{"uppercase in values only", `{"request_id":"ABC","action":"ALLOCATE"}`, subjects.CodeUnknownAction, "ALLOCATE", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := subjects.DecodeRequest([]byte(tt.body), subjects.Allocate)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("DecodeRequest: %v", err)
				}
				if env.RequestID != tt.wantID {
					t.Errorf("request_id %q, want %q", env.RequestID, tt.wantID)
				}
				return
			}
			var we *subjects.Error
			if !errors.As(err, &we) || we.Code != tt.wantCode || !strings.Contains(we.Message, tt.wantMsg) {
				t.Errorf("DecodeRequest error %v, want %s mentioning %q", err, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// manyKeys is n distinct keys of an object, without the braces.
func manyKeys(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":1`, i)
	}
	return b.String()
}

// TestRefusedRequestsKeepTheirID: a request refused for its body still
// names its (valid) request_id, so the client learns which one failed; an
// invalid id is never echoed.
func TestRefusedRequestsKeepTheirID(t *testing.T) {
	tests := []struct{ body, wantID string }{
		{`{"request_id":"r1","data":{"size_bytes":1,"size_bytes":2}}`, "r1"},
		{`{"RequestId":"r2","Action":"memory.launch"}`, "r2"},
		{`{"request_id":"` + strings.Repeat("x", subjects.MaxRequestIDLen+1) + `","data":{"a":1,"a":1}}`, ""},
		{`{"request_id":"r\u0007","action":"memory.allocate"}`, ""},
		{`{"request_id":`, ""},
	}
	for _, tt := range tests {
		env, err := subjects.DecodeRequest([]byte(tt.body), subjects.Allocate)
		if err == nil {
			t.Errorf("%s: accepted", tt.body)
			continue
		}
		got := ""
		if env != nil {
			got = env.RequestID
		}
		if got != tt.wantID {
			t.Errorf("%.60s: request_id %q with the error, want %q", tt.body, got, tt.wantID)
		}
	}
}

func TestDecodeNormalisesNestedKeys(t *testing.T) {
	var req subjects.DeallocateRequest
	err := subjects.Decode([]byte(`{"DeviceId":"n-gpu0","AllocationIds":["a","b"]}`), &req)
	if err != nil || req.DeviceID != "n-gpu0" || len(req.AllocationIDs) != 2 {
		t.Errorf("Decode = %+v, %v", req, err)
	}
}

func TestDecodeRefusesUnknownFields(t *testing.T) {
	for _, body := range []string{
		`{"size_bytes":1,"sise":2}`,
		`{"SizeBytes":1,"Bogus":true}`,
		`{"size_bytes":1,"size_bytes_":1}`,
	} {
		var req subjects.AllocateRequest
		err := subjects.Decode([]byte(body), &req)
		var we *subjects.Error
		if !errors.As(err, &we) || we.Code != subjects.CodeInvalidRequest || !strings.Contains(we.Message, "unknown field") {
			t.Errorf("Decode(%s) = %v, want INVALID_REQUEST unknown field", body, err)
		}
	}
}

func TestValidateAllocate(t *testing.T) {
	tests := []struct {
		name string
		req  subjects.AllocateRequest
		ok   bool
	}{
		{"minimal", subjects.AllocateRequest{SizeBytes: 1}, true},
		{"pinned any case", subjects.AllocateRequest{SizeBytes: 1, AllocationType: "Pinned"}, true},
		{"zero", subjects.AllocateRequest{SizeBytes: 0}, false},
		{"negative", subjects.AllocateRequest{SizeBytes: -5}, false},
		{"beyond any device", subjects.AllocateRequest{SizeBytes: subjects.MaxSizeBytes + 1}, false},
		{"alignment 4096", subjects.AllocateRequest{SizeBytes: 1, Alignment: 4096}, true},
		{"alignment 3", subjects.AllocateRequest{SizeBytes: 1, Alignment: 3}, false},
		{"alignment too large", subjects.AllocateRequest{SizeBytes: 1, Alignment: 4 << 20}, false},
		{"bad type", subjects.AllocateRequest{SizeBytes: 1, AllocationType: "DISK"}, false},
		{"ttl", subjects.AllocateRequest{SizeBytes: 1, TTLSeconds: 0.5}, true},
		{"negative ttl", subjects.AllocateRequest{SizeBytes: 1, TTLSeconds: -1}, false},
		{"ttl too long", subjects.AllocateRequest{SizeBytes: 1, TTLSeconds: 1e9}, false},
		{"long purpose", subjects.AllocateRequest{SizeBytes: 1, Purpose: strings.Repeat("p", 300)}, false},
		{"control char", subjects.AllocateRequest{SizeBytes: 1, ModelID: "a\nb"}, false},
		{"bad utf8", subjects.AllocateRequest{SizeBytes: 1, Purpose: "\xff"}, false},
		{"a replacement character", subjects.AllocateRequest{SizeBytes: 1, ModelID: "m\ufffd"}, false},
		{"a reservation's pid", subjects.AllocateRequest{SizeBytes: 1, AllocationType: subjects.Reservation, PID: subjects.MaxPID}, true},
		{"a pid past Linux's largest", subjects.AllocateRequest{SizeBytes: 1, AllocationType: subjects.Reservation, PID: subjects.MaxPID + 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			var we *subjects.Error
			if err != nil && (!errors.As(err, &we) || we.Code != subjects.CodeInvalidRequest) {
				t.Errorf("error %v is not an INVALID_REQUEST *Error", err)
			}
		})
	}
}

// TestValidatePIDsAndWindows: process ids and analytics windows outside
// what they can mean are refused on every request that carries them.
func TestValidatePIDsAndWindows(t *testing.T) {
	for _, tt := range []struct {
		name string
		req  interface{ Validate() error }
		ok   bool
	}{
		{"resize, pid", &subjects.ResizeRequest{AllocationID: "a", SizeBytes: 1, PID: 4242}, true},
		{"resize, pid past Linux's largest", &subjects.ResizeRequest{AllocationID: "a", SizeBytes: 1, PID: subjects.MaxPID + 1}, false},
		{"resize, negative pid", &subjects.ResizeRequest{AllocationID: "a", SizeBytes: 1, PID: -1}, false},
		{"analytics, default window", &subjects.AnalyticsRequest{}, true},
		{"analytics, a second", &subjects.AnalyticsRequest{WindowSeconds: 1}, true},
		{"analytics, under a second", &subjects.AnalyticsRequest{WindowSeconds: 1e-9}, false},
		{"analytics, past a day", &subjects.AnalyticsRequest{WindowSeconds: subjects.MaxWindowSeconds + 1}, false},
	} {
		if err := tt.req.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestDeallocateIDsDeduplicates(t *testing.T) {
	// Ids are matched in any letter case: spellings that differ only in
	// case are one id, kept as first spelt.
	r := subjects.DeallocateRequest{AllocationID: "a", AllocationIDs: []string{"b", "A", "c", "b", "C", "d"}}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.IDs(), ","); got != "a,b,c,d" {
		t.Errorf("IDs() = %s, want a,b,c,d", got)
	}
}

func TestErrorCodesMapToStatus(t *testing.T) {
	want := map[subjects.Code]int{
		subjects.CodeInvalidRequest: 400, subjects.CodeUnknownAction: 400, subjects.CodeUnsupported: 400,
		subjects.CodeDeviceNotFound: 404, subjects.CodeAllocationNotFound: 404, subjects.CodeTransferNotFound: 404,
		subjects.CodeConflict: 409, subjects.CodeInternal: 500, subjects.CodeDeviceUnavailable: 503,
		subjects.CodeOutOfMemory: 507,
	}
	for code, status := range want {
		if got := code.Status(); got != status {
			t.Errorf("%s.Status() = %d, want %d", code, got, status)
		}
	}
}
