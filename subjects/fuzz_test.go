package subjects_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/memworker/memworker/subjects"
)

// FuzzDecodeRequest feeds arbitrary bytes to the envelope and payload
// decoders and validators: they must never panic, and every failure must
// be a wire error with a request code.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `{"request_id":"r","action":"memory.allocate","data":{"size_bytes":1024}}`,
		`{"RequestId":"r","Data":{"SizeBytes":1,"AllocationType":"pinned","TtlSeconds":1.5}}`,
		`{"data":{"allocation_ids":["a","b"]}}`, `{"data":{"strategies":["defragment"],"target_usage_percentage":50}}`,
		`{"data":{"optimization_type":"evict","target_usage_percentage":10,"force":true}}`,
		`{"data":{"window_seconds":60,"max_samples":10}}`, `[`, `{"data":{"a":{"b":{"c":[1,2,{"D":1}]}}}}`,
		// Hostile shapes: many keys, the same key twice, folded and
		// escaped keys, long strings, control characters in the id.
		`{"data":{"A":1,"A":1,"A":1,"A":1}}`, `{"data":{"device_id":"x","device_id":"y"}}`,
		`{"data":{"ſize_bytes":1}}`, `{"data":{"SIZE_BYTES":1}}`, `{"Request\u0049d":"r"}`,
		`{"data":{` + strings.Repeat(`"k":1,`, 40) + `"k":1}}`,
		`{"request_id":"` + strings.Repeat("x", 300) + `"}`, `{"request_id":"a\u0001b"}`,
		`{"data":{"device_id":"` + strings.Repeat("d", 2000) + `"}}`,
	} {
		f.Add([]byte(seed))
	}
	payloads := []func() any{
		func() any { return &subjects.AllocateRequest{} }, func() any { return &subjects.DeallocateRequest{} },
		func() any { return &subjects.AllocationsRequest{} }, func() any { return &subjects.ClearRequest{} },
		func() any { return &subjects.TransferRequest{} }, func() any { return &subjects.OptimizeRequest{} },
		func() any { return &subjects.ModelOptimizeRequest{} }, func() any { return &subjects.AnalyticsRequest{} },
		func() any { return &subjects.StatusRequest{} }, func() any { return &subjects.GetTransferRequest{} },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := subjects.DecodeRequest(body, subjects.Allocate)
		checkWireError(t, err)
		if err != nil || len(env.Data) == 0 {
			return
		}
		for _, p := range payloads {
			req := p()
			err := subjects.Decode(env.Data, req)
			checkWireError(t, err)
			// Data whose keys the envelope checked decodes the same
			// without a second scan.
			again := p()
			if errAgain := subjects.DecodeData(env.Data, again); (err == nil) != (errAgain == nil) || !reflect.DeepEqual(req, again) {
				t.Fatalf("%q: Decode %+v, %v; DecodeData %+v, %v", env.Data, req, err, again, errAgain)
			}
			if v, ok := req.(interface{ Validate() error }); ok && err == nil {
				checkWireError(t, v.Validate())
			}
		}
	})
}

func checkWireError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var we *subjects.Error
	if !errors.As(err, &we) || (we.Code != subjects.CodeInvalidRequest && we.Code != subjects.CodeUnknownAction) || we.Message == "" {
		t.Fatalf("error %v (%T) is not a request wire error", err, err)
	}
}
