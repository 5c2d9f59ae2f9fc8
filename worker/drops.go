package worker

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/memworker/memworker/subjects"
)

// Reasons a request is dropped without a reply.
const (
	dropNoReply      = "no_reply_subject"
	dropReplySubject = "reply_subject_not_allowed"
)

// replyAllowed reports whether the worker may publish a reply on subject:
// never on its own subject space (memory.>: a reply there would be a
// forged pressure or lifecycle event, sent with the worker's permissions)
// nor on the server's $ APIs.
func replyAllowed(subject string) bool {
	return subject != "" && !strings.HasPrefix(subject, subjects.Root+".") && !strings.HasPrefix(subject, "$")
}

// sampledLog logs a recurring client mistake at most once per interval,
// with how many happened since the last line, so a flood of them costs one
// line, not one per request.
type sampledLog struct {
	mu       sync.Mutex
	interval time.Duration
	last     time.Time
	count    int
}

// note counts one occurrence and logs when the interval has passed.
func (s *sampledLog) note(log *slog.Logger, msg string, args ...any) {
	s.mu.Lock()
	s.count++
	now := time.Now()
	if now.Sub(s.last) < s.interval {
		s.mu.Unlock()
		return
	}
	n := s.count
	s.count, s.last = 0, now
	s.mu.Unlock()
	log.Warn(msg, append(args, "count", n, "every", s.interval)...)
}

// clipArg shortens a client-chosen string for a log line.
func clipArg(s string) string {
	if len(s) > subjects.MaxQuoted {
		return s[:subjects.MaxQuoted] + "..."
	}
	return s
}
