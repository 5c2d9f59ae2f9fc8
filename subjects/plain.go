package subjects

import "bytes"

// plainEnvelope reads the envelope of a plain body in one pass, without
// the general decoder: an object of request_id, action and data, its keys
// checked (checkKeys) and spelled snake_case, its strings printable ASCII
// without escapes, data any such JSON value. Those are the bodies clients
// send (subjects.NewRequest, the .NET client), at most maxPlainBody long,
// and reading them this way costs a few hundred bytes of code where the
// general decoder, met cold between requests, costs microseconds. ok is false for any other body,
// well-formed or not: the general decoder reads it and reports what is
// wrong. FuzzPlainEnvelope holds the two to the same result.
func plainEnvelope(body []byte) (env Envelope, ok bool) {
	if len(body) > maxPlainBody {
		return env, false
	}
	p := plain{b: body}
	if !p.byte('{') {
		return env, false
	}
	if p.byte('}') {
		return env, p.end()
	}
	for {
		key, ok := p.str()
		if !ok || !p.byte(':') {
			return env, false
		}
		p.space()
		switch string(key) {
		case "request_id", "action":
			v, ok := p.str()
			if !ok {
				return env, false
			}
			if key[0] == 'r' {
				env.RequestID = string(v)
			} else {
				env.Action = string(v)
			}
		case "data":
			from := p.i
			if !p.value(0) {
				return env, false
			}
			env.Data = bytes.Clone(body[from:p.i])
		default:
			return env, false
		}
		if p.byte('}') {
			return env, p.end()
		}
		if !p.byte(',') {
			return env, false
		}
	}
}

// maxPlainBody bounds the bodies plainEnvelope reads: clients' envelopes
// are a few hundred bytes; a long one is read by the general decoder,
// which steps over long strings many bytes at a time.
const maxPlainBody = 4 << 10

// maxPlainDepth bounds the nesting plainEnvelope reads; deeper data goes
// to the general decoder.
const maxPlainDepth = 16

// plain is plainEnvelope's cursor over a body.
type plain struct {
	b []byte
	i int
}

// space steps over white space.
func (p *plain) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// byte steps over white space and c, reporting whether c came.
func (p *plain) byte(c byte) bool {
	p.space()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (p *plain) end() bool {
	p.space()
	return p.i == len(p.b)
}

// str reads a string of printable ASCII without escapes and returns its
// contents.
func (p *plain) str() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	from := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return p.b[from : p.i-1], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// value reads one plain JSON value at nesting depth.
func (p *plain) value(depth int) bool {
	p.space()
	if p.i >= len(p.b) || depth > maxPlainDepth {
		return false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		_, ok := p.str()
		return ok
	case c == '{':
		return p.items('}', func() bool {
			_, ok := p.str()
			return ok && p.byte(':') && p.value(depth+1)
		})
	case c == '[':
		return p.items(']', func() bool { return p.value(depth + 1) })
	case c == 't':
		return p.word("true")
	case c == 'f':
		return p.word("false")
	case c == 'n':
		return p.word("null")
	default:
		return p.number()
	}
}

// items reads members separated by commas up to end, the opening byte
// next.
func (p *plain) items(end byte, member func() bool) bool {
	p.i++
	if p.byte(end) {
		return true
	}
	for {
		if !member() {
			return false
		}
		if p.byte(end) {
			return true
		}
		if !p.byte(',') {
			return false
		}
	}
}

// word reads the literal w.
func (p *plain) word(w string) bool {
	if !bytes.HasPrefix(p.b[p.i:], []byte(w)) {
		return false
	}
	p.i += len(w)
	return true
}

// number reads a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *plain) number() bool {
	p.take('-')
	switch {
	case p.take('0'):
	case p.digits() == 0:
		return false
	}
	if p.take('.') && p.digits() == 0 {
		return false
	}
	if p.take('e') || p.take('E') {
		if !p.take('+') {
			p.take('-')
		}
		if p.digits() == 0 {
			return false
		}
	}
	return true
}

// take steps over c when it comes next.
func (p *plain) take(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// digits steps over decimal digits and returns how many.
func (p *plain) digits() int {
	from := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - from
}
