package subjects

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"

	gojson "github.com/goccy/go-json"
)

// Decode decodes a JSON request body into v strictly: keys may be
// snake_case, PascalCase or camelCase (a .NET client without a naming policy
// sends DeviceId), exactly so (checkKeys); unknown and repeated keys and
// trailing data are refused, and every failure is an INVALID_REQUEST *Error
// that names the offending field.
//
// It decodes with goccy/go-json's Unmarshal: the same rules as
// encoding/json's Decoder with DisallowUnknownFields, at a fraction of the
// cost (BenchmarkDecode).
func Decode(body []byte, v any) error {
	body, err := snakeCased(body)
	if err != nil {
		return err
	}
	return DecodeData(body, v)
}

// snakeCased checks body's keys (checkKeys) and returns it with every key
// in snake_case (a copy when some key was not).
func snakeCased(body []byte) ([]byte, error) {
	rewrite, err := checkKeys(body)
	if err != nil {
		return nil, err
	}
	if rewrite {
		body = snakeKeys(body)
	}
	return body, nil
}

// DecodeData decodes an envelope's data, as DecodeRequest returned it,
// into v strictly. DecodeRequest has checked every key of the whole body,
// data's included, and rewritten them to snake_case, so the keys are not
// scanned a second time; unknown keys and trailing data are refused as
// Decode refuses them (FuzzDecodeRequest holds it to Decode).
func DecodeData(data json.RawMessage, v any) error {
	if err := gojson.UnmarshalWithOption(data, v, disallowUnknownFields); err != nil {
		return describeJSONError(err)
	}
	return nil
}

// disallowUnknownFields is the option that makes goccy/go-json's Unmarshal
// refuse unknown keys, as its Decoder.DisallowUnknownFields does. The
// library exports that switch only on its Decoder, whose stream buffer cost
// more than the decoding itself (two allocations of about 1 KiB per
// request), so the flag is read once from a Decoder told to disallow them
// and applied to Unmarshal. TestDecodeRefusesUnknownFields holds it to that.
var disallowUnknownFields = func() gojson.DecodeOptionFunc {
	dec := gojson.NewDecoder(strings.NewReader("{}"))
	dec.DisallowUnknownFields()
	var strict gojson.DecodeOption
	_ = dec.DecodeWithOption(&struct{}{}, func(o *gojson.DecodeOption) { strict.Flags = o.Flags })
	return func(o *gojson.DecodeOption) { o.Flags |= strict.Flags }
}()

func describeJSONError(err error) *Error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var gsyntax *gojson.SyntaxError
	var gtyp *gojson.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return Invalid("malformed JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &gsyntax) && strings.Contains(gsyntax.Error(), "unexpected end of JSON input"):
		return Invalid("truncated JSON")
	case errors.As(err, &gsyntax):
		return Invalid("malformed JSON at byte %d: %v", gsyntax.Offset, strings.TrimPrefix(gsyntax.Error(), "json: "))
	case errors.As(err, &typ):
		return typeError(typ.Field, typ.Value, typ.Type.Kind().String())
	case errors.As(err, &gtyp):
		return typeError(gtyp.Field, gtyp.Value, gtyp.Type.Kind().String())
	case errors.Is(err, io.EOF):
		return Invalid("empty JSON body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Invalid("truncated JSON")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return Invalid("unknown field %s", f)
	}
	return Invalid("%s", strings.TrimPrefix(msg, "json: "))
}

func typeError(field, value, kind string) *Error {
	if field == "" {
		return Invalid("expected a JSON object, got %s", value)
	}
	return Invalid("field %s: expected %s, got %s", field, jsonKind(kind), value)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	default:
		return "an object"
	}
}

// Canonical is body in one spelling: keys snake_case and sorted, no white
// space, numbers as written. Two requests with the same canonical form ask
// for the same thing (a retry may reorder keys or change their case).
func Canonical(body []byte) ([]byte, error) {
	body, err := snakeCased(body)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, describeJSONError(err)
	}
	return json.Marshal(v)
}
