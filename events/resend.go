package events

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sending again the events the stream did not acknowledge.
//
// An event whose acknowledgement did not come for a reason that may pass
// (no stream answered, no acknowledgement in time, the stream or its
// leader unavailable) is queued, at most MaxPending of them, the newest
// kept. Once Check has the stream, it sends the queued events again with
// their message ids, a few at a time, and each again after 0, 1, 2, 4 and
// 8 s at most. An event the stream refused (too large, no room) is not
// sent again: it would be refused again, and each sending reaches core
// subscribers once more.

// duplicateWindow is the stream's: a message id seen within it is stored
// once.
const duplicateWindow = 2 * time.Minute

// resendWindow: an event is sent again only while its own time is within
// this of now. Its time is no later than its first sending, so every
// sending reaches the stream within its duplicate window, which then keeps
// the event once; the margin covers the way to the stream.
const resendWindow = duplicateWindow - 10*time.Second

// maxResends bounds how often one event is sent again: a stream that
// stores events without acknowledging them costs each event at most this
// many more deliveries to core subscribers.
const maxResends = 5

// unkept is an event to send again.
type unkept struct {
	msg *nats.Msg // without a reply subject
	// at is the event's own time, no later than its first sending.
	at time.Time
	// resends counts its sendings again; next is when it is due.
	resends int
	next    time.Time
	// paf is the sending again in flight.
	paf jetstream.PubAckFuture
}

// backoff is the wait before the (n+1)th sending again: none, then 1, 2,
// 4 and 8 s.
func backoff(n int) time.Duration {
	if n == 0 {
		return 0
	}
	return time.Duration(1<<(n-1)) * time.Second
}

// notKept hears of an event the stream did not acknowledge: no stream
// answered (gone, and nobody else subscribed), no acknowledgement came in
// time (gone, with subscribers, or a leader being elected), or the stream
// refused it. It queues the event to be sent again where that may help,
// and Check looks for the stream next.
func (p *Publisher) notKept(_ jetstream.JetStream, msg *nats.Msg, err error) {
	now := time.Now()
	p.mu.Lock()
	say := !p.lost && now.After(p.quietUntil)
	p.lost = true
	u, again := p.inflight[msg]
	delete(p.inflight, msg)
	if !again {
		u = &unkept{msg: &nats.Msg{Subject: msg.Subject, Header: msg.Header, Data: msg.Data}, at: eventTime(msg, now)}
	}
	queued := false
	switch {
	case !passing(err), u.resends >= maxResends, now.Sub(u.at) >= resendWindow:
		p.givenUp++
	default:
		u.paf, u.next = nil, now.Add(backoff(u.resends))
		p.enqueue(u)
		queued = true
	}
	p.mu.Unlock()
	if say {
		what := "not sent again: the stream refused it"
		if queued {
			what = "to be sent again"
		}
		p.opts.Logf("event on %s not kept in %s (%v); looking for the stream, the event %s", msg.Subject, StreamName, err, what)
	}
}

// passing tells an error that may pass (a timeout, no responders, a
// disconnection, the stream or its leader unavailable: 503) from a
// refusal that would come again.
func passing(err error) bool {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.Code == 503
	}
	return true
}

// enqueue appends u, pushing out the oldest beyond MaxPending. The caller
// holds p.mu.
func (p *Publisher) enqueue(u ...*unkept) {
	p.unkept = append(p.unkept, u...)
	if over := len(p.unkept) - p.opts.MaxPending; over > 0 {
		p.unkept = p.unkept[over:]
		p.givenUp += over
	}
}

// resend sends again the queued events that are due, oldest first, at most
// half the acknowledgements the publisher may still await: new events keep
// the rest, and the caller (the event pump, which devices wait on) is not
// held. Those sent again and acknowledged since the last call are
// forgotten, as are those whose outcome never came within the window.
func (p *Publisher) resend(now time.Time) {
	free := (p.opts.MaxPending - p.js.PublishAsyncPending()) / 2
	p.mu.Lock()
	for m, u := range p.inflight {
		if now.Sub(u.at) >= duplicateWindow { // its outcome never came: forget it
			delete(p.inflight, m)
			continue
		}
		if u.paf == nil {
			continue
		}
		select {
		case <-u.paf.Ok():
			delete(p.inflight, m)
		default:
		}
	}
	var due, rest []*unkept
	for _, u := range p.unkept {
		switch {
		case now.Sub(u.at) >= resendWindow:
			p.givenUp++
		case len(due) < free && !now.Before(u.next):
			u.resends++
			p.inflight[u.msg] = u // before sending: its failure may come at once
			due = append(due, u)
		default:
			rest = append(rest, u)
		}
	}
	p.unkept = rest
	p.mu.Unlock()
	for i, u := range due {
		paf, err := p.js.PublishMsgAsync(u.msg, jetstream.WithStallWait(time.Millisecond))
		p.mu.Lock()
		if err != nil {
			// Back at the head, as they were, for the next check.
			for _, v := range due[i:] {
				delete(p.inflight, v.msg)
				v.resends--
			}
			left := p.unkept
			p.unkept = append([]*unkept{}, due[i:]...)
			p.enqueue(left...)
			p.mu.Unlock()
			return
		}
		if p.inflight[u.msg] == u {
			u.paf = paf
		}
		p.mu.Unlock()
	}
}

// sayGivenUp logs how many events were not kept since it last said so, at
// most once a minute (always at the end).
func (p *Publisher) sayGivenUp(end bool) {
	p.mu.Lock()
	n := p.givenUp
	now := time.Now()
	say := n > 0 && (end || now.Sub(p.saidAt) >= time.Minute)
	if say {
		p.givenUp, p.saidAt = 0, now
	}
	p.mu.Unlock()
	if say {
		p.opts.Logf("%d events were not kept in %s: refused by it, not acknowledged within %s of their time or after %d sendings again, or more than %d waiting to be sent again", n, StreamName, resendWindow, maxResends, p.opts.MaxPending)
	}
}

// eventTime is the time of the event in msg (its ce-time header, or the
// structured event's time), which is no later than its first sending;
// failing that, about when an event now not acknowledged was sent.
func eventTime(msg *nats.Msg, now time.Time) time.Time {
	s := msg.Header.Get("ce-time")
	if s == "" {
		var e struct {
			Time string `json:"time"`
		}
		_ = json.Unmarshal(msg.Data, &e)
		s = e.Time
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil && !t.After(now) {
		return t
	}
	return now.Add(-ackTimeout)
}
