package worker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestReplyAllowed(t *testing.T) {
	for subject, want := range map[string]bool{
		"_INBOX.abc.1":             true,
		"_R_.xyz.1":                true,
		"my.inbox.1":               true,
		"":                         false,
		"memory.pressure.n1-gpu0":  false,
		"memory.lifecycle.n1":      false,
		"memory.allocate.n1-gpu0":  false,
		"$JS.API.STREAM.INFO.X":    false,
		"$SRV.INFO.memory":         false,
		"memoryless.but.fine.here": true,
	} {
		if got := replyAllowed(subject); got != want {
			t.Errorf("replyAllowed(%q) = %v, want %v", subject, got, want)
		}
	}
}

// TestSampledLogWritesOneLinePerInterval: a flood of one mistake costs one
// line per interval, which says how many there were.
func TestSampledLogWritesOneLinePerInterval(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s := sampledLog{interval: time.Hour}
	for range 50_000 {
		s.note(log, "requests dropped without a reply", "reason", dropNoReply)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != 1 {
		t.Fatalf("%d log lines for 50,000 drops, want 1:\n%s", lines, buf.String())
	}
	s.last = time.Now().Add(-2 * time.Hour)
	s.note(log, "requests dropped without a reply", "reason", dropNoReply)
	if !strings.Contains(buf.String(), "count=50000") {
		t.Errorf("the second line does not count the drops since the first:\n%s", buf.String())
	}
}
