package subjects_test

import (
	"fmt"
	"strings"
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

// BenchmarkDecodeHostile measures refusing 1 MB bodies built to make key
// checking slow: thousands of objects of the most keys allowed, in
// PascalCase (so every key is rewritten and compared). The cost grows with
// the body, not with the square of its keys.
func BenchmarkDecodeHostile(b *testing.B) {
	obj := "{"
	var keys []string
	for i := range subjects.MaxKeysPerObject {
		keys = append(keys, fmt.Sprintf(`"K%dx":1`, i))
	}
	obj += strings.Join(keys, ",") + "}"
	var elems []string
	for n := 0; n < 1<<20; n += len(obj) + 1 {
		elems = append(elems, obj)
	}
	for name, body := range map[string]string{
		"many-objects": `{"data":{"Items":[` + strings.Join(elems, ",") + `]}}`,
		"same-key":     `{"data":{` + strings.Repeat(`"A":1,`, 1<<20/6) + `"A":1}}`,
		"long-string":  `{"data":{"size_bytes":1024,"purpose":"` + strings.Repeat("p", 800<<10) + `"}}`,
		"escaped":      `{"data":{"size_bytes":1024,"purpose":"` + strings.Repeat(`\"`, 400<<10) + `"}}`,
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var req subjects.AllocateRequest
				if err := subjects.Decode([]byte(body), &req); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}
