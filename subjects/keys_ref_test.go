package subjects

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// FuzzNormaliseKeys holds the one-pass key rewrite to what the first
// implementation did (decode to values, rename the keys of every map,
// encode again), kept below as the reference: for any input whose keys
// checkKeys accepts, both refuse it or both give the same value.
func FuzzNormaliseKeys(f *testing.F) {
	for _, seed := range []string{
		`{"RequestId":"r","Data":{"SizeBytes":1,"AllocationIds":["a","b"]}}`,
		`{"data":{"size_bytes":1,"SizeBytes":2}}`, `{"A":1,"A":2}`, `{"A":1,"a":2,"A":3}`,
		`{"\u0041":1,"a":2}`, `{"X":[{"Y":1},{"y":2,"Y":3}]}`, `[{"A":1}]`, `{"A" 1}`, `{"A":"}{\"B\":"}`,
		`{"A":1}{"B":2}`, `{"A":`, `"A"`, `{"Ab\"C":1}`, `{"TTLSeconds":1e3,"P99":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if _, err := checkKeys(body); err != nil {
			return
		}
		want, wantErr := referenceNormalise(body)
		got := snakeKeys(body)
		var v any
		gotErr := decodeAny(got, &v)
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("%q: reference error %v, one-pass error %v (rewrote to %q)", body, wantErr, gotErr, got)
		}
		if wantErr == nil && !reflect.DeepEqual(want, v) {
			t.Fatalf("%q: reference %#v, one-pass %#v", body, want, v)
		}
	})
}

// decodeAny decodes one JSON value with encoding/json, numbers kept as
// text. (The first implementation asked goccy's Decoder.More about trailing
// data, which says nothing after a stray } or ]: it let 0}{"a":1} through.)
func decodeAny(body []byte, v *any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("unexpected data after the JSON value")
	}
	return nil
}

// referenceNormalise is the first implementation of normaliseKeys.
func referenceNormalise(body []byte) (any, error) {
	var v any
	if err := decodeAny(body, &v); err != nil {
		return nil, err
	}
	return referenceSnakeKeys(v)
}

func referenceSnakeKeys(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			sk := Snake(k)
			if _, dup := out[sk]; dup {
				return nil, fmt.Errorf("key %s appears twice", sk)
			}
			nv, err := referenceSnakeKeys(val)
			if err != nil {
				return nil, err
			}
			out[sk] = nv
		}
		return out, nil
	case []any:
		for i, e := range t {
			ne, err := referenceSnakeKeys(e)
			if err != nil {
				return nil, err
			}
			t[i] = ne
		}
		return t, nil
	default:
		return v, nil
	}
}

// FuzzStringEnd holds stringEnd to the plain scan it replaced, which
// steps over each backslash's escaped byte.
func FuzzStringEnd(f *testing.F) {
	for _, seed := range []string{`"a"`, `"a\"b"`, `"a\\"b"`, `"\\\"x\\\\"`, `"abc`, `"\`, `""`, `"\\\\\\"`, `x"\\"`,
		`"` + strings.Repeat("x", 40) + `\\\"` + strings.Repeat(`\"`, 30) + `"`, `"` + strings.Repeat("a", 31) + `\"b"`} {
		f.Add([]byte(seed), 0)
	}
	f.Fuzz(func(t *testing.T, body []byte, i int) {
		if len(body) == 0 {
			return
		}
		i = (i%len(body) + len(body)) % len(body)
		want := len(body)
	scan:
		for j := i + 1; j < len(body); j++ {
			switch body[j] {
			case '\\':
				j++
			case '"':
				want = j
				break scan
			}
		}
		if got := stringEnd(body, i); got != want {
			t.Fatalf("stringEnd(%q, %d) = %d, want %d", body, i, got, want)
		}
	})
}
