package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

func TestWireErrorMapsEveryKind(t *testing.T) {
	tests := []struct {
		err  error
		want subjects.Code
	}{
		{subjects.Invalid("bad"), subjects.CodeInvalidRequest},
		{fmt.Errorf("wrapped: %w", &subjects.Error{Code: subjects.CodeUnknownAction, Message: "x"}), subjects.CodeUnknownAction},
		{fmt.Errorf("a: %w", ledger.ErrAllocationNotFound), subjects.CodeAllocationNotFound},
		{ledger.Errorf(ledger.ErrTransferNotFound, "no transfer t"), subjects.CodeTransferNotFound},
		{ledger.Errorf(ledger.ErrDeviceNotFound, "no device d"), subjects.CodeDeviceNotFound},
		{fmt.Errorf("device 7: %w", device.ErrNotFound), subjects.CodeDeviceNotFound},
		{fmt.Errorf("a: %w", ledger.ErrConflict), subjects.CodeConflict},
		{fmt.Errorf("a: %w", ledger.ErrUnsupported), subjects.CodeUnsupported},
		{ledger.Errorf(ledger.ErrInvalid, "moving to itself"), subjects.CodeInvalidRequest},
		{fmt.Errorf("a: %w", alloc.ErrInvalid), subjects.CodeInvalidRequest},
		{fmt.Errorf("a: %w", device.ErrOutOfMemory), subjects.CodeOutOfMemory},
		{fmt.Errorf("a: %w", device.ErrUnavailable), subjects.CodeDeviceUnavailable},
		{context.DeadlineExceeded, subjects.CodeDeviceUnavailable},
		{fmt.Errorf("transfer: %w", context.Canceled), subjects.CodeDeviceUnavailable},
		{errors.New("surprise"), subjects.CodeInternal},
	}
	for _, tt := range tests {
		got := wireError(tt.err)
		if got.Code != tt.want || got.Message == "" {
			t.Errorf("wireError(%v) = %+v, want %s", tt.err, got, tt.want)
		}
	}
}

func TestEncodeReplyIsTheEnvelope(t *testing.T) {
	now := time.Date(2026, 11, 25, 17, 0, 0, 123, time.FixedZone("x", 3600))
	body, err := newReplyWriter().success(`id "quoted"`, map[string]int{"a": 1}, nil, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	var r subjects.Reply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if !r.Success || r.RequestID != `id "quoted"` || !r.Timestamp.Equal(now) || r.Timestamp.Location() != time.UTC || string(r.Data) != `{"a":1}` {
		t.Errorf("reply %+v from %s", r, body)
	}
}
