package subjects

import (
	"cmp"
	"encoding/json"
	"time"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
)

// Envelope is the seed's request envelope. Action is optional (the subject
// names the op); when present it must name the subject's op. Data holds the
// op's payload.
type Envelope struct {
	RequestID string          `json:"request_id,omitempty"`
	Action    string          `json:"action,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
}

// Reply is the seed's reply envelope, for success and failure alike.
type Reply struct {
	Success      bool            `json:"success"`
	RequestID    string          `json:"request_id"`
	Timestamp    time.Time       `json:"timestamp"`
	Data         json.RawMessage `json:"data,omitempty"`
	ErrorCode    Code            `json:"error_code,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
	// TenantUsage, in a success reply to a tenant, is what the tenant holds
	// on the device against its quota.
	TenantUsage *TenantUsage `json:"tenant_usage,omitempty"`
}

// TenantUsage is what a tenant holds on a device: the VRAM bytes it asked
// for (what its quota caps) and its allocations. QuotaBytes is 0 without a
// quota.
type TenantUsage struct {
	Tenant         string `json:"tenant"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	QuotaBytes     int64  `json:"quota_bytes"`
	Allocations    int    `json:"allocations"`
}

// Err returns the reply's error as an *Error, or nil on success.
func (r *Reply) Err() error {
	if r.Success {
		return nil
	}
	return &Error{Code: r.ErrorCode, Message: r.ErrorMessage}
}

// MaxRequestIDLen bounds request ids.
const MaxRequestIDLen = 256

// NewRequest builds an encoded request envelope for op with data as payload.
func NewRequest(requestID string, op Op, data any) ([]byte, error) {
	raw, err := gojson.Marshal(data)
	if err != nil {
		return nil, err
	}
	return gojson.Marshal(Envelope{RequestID: requestID, Action: op.Action(), Data: raw})
}

// DecodeRequest decodes and checks an envelope received on op's subject.
// Keys may be snake_case, PascalCase or camelCase. An empty body is a request
// with no data. With an error, the envelope returned (when not nil) holds
// only what may be echoed: a request_id that is valid, found even in a body
// refused for something else, so the client learns which request failed.
func DecodeRequest(body []byte, op Op) (*Envelope, error) {
	var req Envelope
	if len(body) > 0 {
		snake, err := snakeCased(body)
		if err != nil {
			return salvageID(body), err
		}
		var plain bool
		if req, plain = plainEnvelope(snake); !plain {
			req = Envelope{}
			if err := DecodeData(snake, &req); err != nil {
				return salvageID(body), err
			}
		}
	}
	if err := checkRequestID(req.RequestID); err != nil {
		req.RequestID = ""
		return &req, err
	}
	if req.Action != "" {
		got, ok := ParseAction(req.Action)
		if !ok {
			return &req, &Error{Code: CodeUnknownAction, Message: "unknown action " + Quote(req.Action)}
		}
		if got != op {
			return &req, Invalid("action %s does not match the subject's operation %s", Quote(req.Action), op.Action())
		}
	}
	return &req, nil
}

// checkRequestID refuses a request_id longer than MaxRequestIDLen or with
// characters that are not printable ASCII.
func checkRequestID(id string) error {
	if len(id) > MaxRequestIDLen {
		return Invalid("request_id is longer than %d bytes", MaxRequestIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c > 0x7e {
			return Invalid("request_id holds a character that is not printable ASCII at byte %d", i)
		}
	}
	return nil
}

// salvageID returns an envelope with the request_id of a refused body when
// one can be read leniently and is valid, else nil.
func salvageID(body []byte) *Envelope {
	var ids struct {
		Snake  string `json:"request_id"`
		Pascal string `json:"RequestId"`
		Camel  string `json:"requestId"`
	}
	if len(body) > 1<<20 || json.Unmarshal(body, &ids) != nil {
		return nil
	}
	id := cmp.Or(ids.Snake, ids.Pascal, ids.Camel)
	if id == "" || checkRequestID(id) != nil {
		return nil
	}
	return &Envelope{RequestID: id}
}

// DecodeReply decodes a reply envelope and, on success, its data into
// data (which may be nil). Replies come from the worker, so it decodes
// leniently (unknown keys are skipped, so a newer worker may add fields);
// requests, which come from anyone, are decoded strictly with Decode.
func DecodeReply(body []byte, data any) (*Reply, error) {
	var resp Reply
	if err := gojson.Unmarshal(body, &resp); err != nil {
		return nil, err
	}
	if !resp.Success {
		return &resp, resp.Err()
	}
	if data != nil && len(resp.Data) > 0 {
		if err := gojson.Unmarshal(resp.Data, data); err != nil {
			return &resp, err
		}
	}
	return &resp, nil
}

// MaxQuoted bounds how much of a client's input an error message quotes.
const MaxQuoted = 64

// Quote shortens and quotes untrusted text for error messages: at most
// MaxQuoted bytes of it, then "...".
func Quote(s string) string {
	if len(s) > MaxQuoted {
		s = s[:MaxQuoted] + "..."
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// MaxErrorMessage bounds an error message on the wire (body and
// Nats-Service-Error header), whatever it quotes.
const MaxErrorMessage = 512

// Clip shortens msg to MaxErrorMessage bytes, on a UTF-8 boundary.
func Clip(msg string) string {
	if len(msg) <= MaxErrorMessage {
		return msg
	}
	cut := MaxErrorMessage - len("...")
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "..."
}
