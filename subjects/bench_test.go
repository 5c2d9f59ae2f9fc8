package subjects_test

import (
	"testing"

	"github.com/memworker/memworker/subjects"
)

// BenchmarkDecode measures request decoding, the fast path (snake_case keys)
// beside the one that rewrites PascalCase keys.
func BenchmarkDecode(b *testing.B) {
	for name, body := range map[string]string{
		"snake":  `{"request_id":"r-1","action":"memory.allocate","data":{"size_bytes":1048576,"allocation_type":"VRAM","purpose":"kv_cache","model_id":"m"}}`,
		"pascal": `{"RequestId":"r-1","Action":"memory.allocate","Data":{"SizeBytes":1048576,"AllocationType":"VRAM","Purpose":"kv_cache","ModelId":"m"}}`,
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				env, err := subjects.DecodeRequest([]byte(body), subjects.Allocate)
				if err != nil {
					b.Fatal(err)
				}
				var req subjects.AllocateRequest
				if err := subjects.Decode(env.Data, &req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
