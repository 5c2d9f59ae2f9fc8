package subjects

import (
	"reflect"
	"strings"
	"testing"
)

// plainCases are bodies clients send, and bodies one step from plain.
var plainCases = []string{
	`{}`, ` { } `, `{"action":"memory.get_status","data":null}`,
	`{"request_id":"a8Hd7LpQ2xN9vB3kR5tY1z","action":"memory.allocate","data":{"size_bytes":1048576}}`,
	`{"request_id":"r","action":"memory.deallocate","data":{"allocation_id":"0f8fad5b-d9cb-469f-a165-70867728950e"}}`,
	`{"RequestId":"r","Action":"memory.allocate","Data":{"SizeBytes":1,"AllocationType":"pinned","TtlSeconds":1.5}}`,
	"{\n\t\"data\" : { \"a\" : [ 1 , -2.5e+3 , 0.0 , true , false , null , \"s\" , { } , [ ] ] } \r\n}",
	`{"data":{"a":{"b":{"c":[1,2,{"d":1}]}}}}`, `{"data":[]}`, `{"data":"x"}`, `{"data":12}`, `{"data":-0}`,
	`{"data":{}}`, `{"data":{"k":1e5}}`, `{"data":{"k":1E-5}}`,
	// Not plain, or not JSON: the general decoder answers.
	``, ` `, `{`, `}`, `[]`, `null`, `{"data":{}} x`, `{"data":{},}`, `{,"data":{}}`, `{"data"}`, `{"data":}`,
	`{"request_id":1}`, `{"request_id":null}`, `{"action":true}`, `{"request_id":"a\"b"}`, `{"request_id":"a\u0001b"}`,
	`{"request_id":"é"}`, `{"data":{"k":"é"}}`, `{"data":{"k":"\n"}}`, `{"data":{"k":"a\tb"}}`,
	`{"data":01}`, `{"data":1.}`, `{"data":.5}`, `{"data":1e}`, `{"data":+1}`, `{"data":-}`, `{"data":--1}`,
	`{"data":tru}`, `{"data":nul}`, `{"data":NaN}`, `{"data":{"a":1,}}`, `{"data":[1,]}`, `{"data":[1 2]}`,
	`{"data":{"a" 1}}`, `{"data":{1:1}}`, `{"data":{"a":1}`, `{"other":1}`, `{"data":{}, "data":{}}`,
	`{"data":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}`,
	`{"request_id":"` + strings.Repeat("x", 300) + `"}`, "{\"data\":{}}\x00",
}

// TestPlainEnvelopeIsTheGeneralDecoders holds plainEnvelope to the
// general decoder on every case: where it reads a body, it reads what the
// general decoder reads.
func TestPlainEnvelopeIsTheGeneralDecoders(t *testing.T) {
	read := 0
	for _, body := range plainCases {
		if samePlainEnvelope(t, []byte(body)) {
			read++
		}
	}
	if read < 15 {
		t.Fatalf("the plain reader read %d of the plain cases", read)
	}
}

func FuzzPlainEnvelope(f *testing.F) {
	for _, body := range plainCases {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { samePlainEnvelope(t, body) })
}

// samePlainEnvelope checks body's envelope read both ways and reports
// whether the plain reader read it.
func samePlainEnvelope(t *testing.T, body []byte) bool {
	t.Helper()
	snake, err := snakeCased(body)
	if err != nil {
		return false
	}
	got, ok := plainEnvelope(snake)
	if !ok {
		return false
	}
	var want Envelope
	if err := DecodeData(snake, &want); err != nil {
		t.Fatalf("%q: the plain reader read %+v, the general decoder refused it: %v", body, got, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: the plain reader read %+v, the general decoder %+v", body, got, want)
	}
	return true
}

// TestALongBodyIsTheGeneralDecoders: a body over maxPlainBody, plain or
// not, is read by the general decoder, which steps over long strings many
// bytes at a time.
func TestALongBodyIsTheGeneralDecoders(t *testing.T) {
	body := []byte(`{"data":{"size_bytes":1024,"purpose":"` + strings.Repeat("p", maxPlainBody) + `"}}`)
	if _, ok := plainEnvelope(body); ok {
		t.Error("the plain reader read a body over maxPlainBody")
	}
	if _, ok := plainEnvelope(body[:0:0]); ok {
		t.Error("the plain reader read an empty body")
	}
}
