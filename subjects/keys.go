package subjects

import (
	"bytes"
	"strconv"
	"strings"
)

// Bounds on the keys of a request. The contract's objects have fewer than
// 20 keys of fewer than 30 bytes each.
const (
	MaxKeysPerObject = 32
	MaxKeyLen        = 64
)

// checkKeys checks every object key of body in one pass, in time linear in
// its length: a key is 1 to MaxKeyLen plain ASCII letters, digits and
// underscores, spelled snake_case (no upper case) or PascalCase/camelCase
// (no underscore); an object holds at most MaxKeysPerObject keys and none
// twice, in any spelling (which one would count is a guess, and a second
// device_id could slip past the device check). It reports whether some key
// must be rewritten to snake_case. Anything else malformed is left to the
// strict decoder, which reports it.
func checkKeys(body []byte) (rewrite bool, err error) {
	var stackBuf [8]keyFrame
	var keysBuf [32]keySeen
	var namesBuf [512]byte
	stack, keys, names := stackBuf[:0], keysBuf[:0], namesBuf[:0]
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '"':
			end := stringEnd(body, i)
			if end >= len(body) || !isKey(body, end) {
				i = end
				continue
			}
			k := keySeen{orig: span{i + 1, end}}
			i = end
			orig := k.orig.of(body)
			upper, ok := spelledKey(orig)
			if !ok {
				return false, Invalid("key %s is not a field name: keys are snake_case, PascalCase or camelCase ASCII names of at most %d bytes", Quote(string(orig)), MaxKeyLen)
			}
			if upper {
				rewrite = true
				at := len(names)
				names = appendSnake(names, orig)
				k.snake, k.rewritten = span{at, len(names)}, true
			}
			snake := k.name(body, names)
			n := len(stack)
			if n == 0 || !stack[n-1].object {
				continue
			}
			f := &stack[n-1]
			if len(keys)-f.first >= MaxKeysPerObject {
				return false, Invalid("an object %shas more than %d keys", inPath(keyPath(stack, keys, body, names)), MaxKeysPerObject)
			}
			for _, prev := range keys[f.first:] {
				if bytes.Equal(prev.name(body, names), snake) {
					path := keyPath(stack, keys, body, names) + string(snake)
					if bytes.Equal(prev.orig.of(body), orig) {
						return false, Invalid("key %s appears twice", path)
					}
					return false, Invalid("key %s appears twice (as %s and %s)", path, Quote(string(prev.orig.of(body))), Quote(string(orig)))
				}
			}
			f.key = len(keys)
			keys = append(keys, k)
		case '{', '[':
			stack = append(stack, keyFrame{object: c == '{', first: len(keys), names: len(names), key: -1})
		case '}', ']':
			if n := len(stack); n > 0 {
				keys, names = keys[:stack[n-1].first], names[:stack[n-1].names]
				stack = stack[:n-1]
			}
		case ',':
			if n := len(stack); n > 0 && !stack[n-1].object {
				stack[n-1].index++
			}
		}
	}
	return rewrite, nil
}

// spelledKey reports whether key is a plain ASCII name spelled in one of
// the accepted cases, and whether it has upper-case letters.
func spelledKey(key []byte) (upper, ok bool) {
	if len(key) == 0 || len(key) > MaxKeyLen {
		return false, false
	}
	under := false
	for _, c := range key {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z':
			upper = true
		case c == '_':
			under = true
		default:
			return false, false
		}
	}
	return upper, !(upper && under)
}

// snakeKeys rewrites every object key of body to snake_case in one pass
// over the bytes; everything else is copied as it is. checkKeys has
// accepted body, so every key is a plain ASCII name.
func snakeKeys(body []byte) []byte {
	out := make([]byte, 0, len(body)+len(body)/8)
	for i := 0; i < len(body); i++ {
		if body[i] != '"' {
			out = append(out, body[i])
			continue
		}
		end := stringEnd(body, i)
		if end < len(body) && isKey(body, end) {
			out = append(appendSnake(append(out, '"'), body[i+1:end]), '"')
		} else {
			out = append(out, body[i:min(end+1, len(body))]...)
		}
		i = end
	}
	return out
}

// keyFrame is an object or array checkKeys is inside.
type keyFrame struct {
	object bool
	index  int // arrays: the element being read
	first  int // objects: where their keys start in the keys seen
	names  int // objects: where their rewritten names start
	key    int // objects: the key being read, in the keys seen; -1 before the first
}

// keySeen is a key of an open object, by where its bytes are (offsets,
// not slices, so checkKeys's buffers stay on the stack).
type keySeen struct {
	orig      span // in the body, as the client spelled it
	snake     span // in the rewritten names, when rewritten
	rewritten bool
}

// span is a range of a byte slice.
type span struct{ from, to int }

func (s span) of(b []byte) []byte { return b[s.from:s.to] }

// name is the key in snake_case.
func (k keySeen) name(body, names []byte) []byte {
	if k.rewritten {
		return k.snake.of(names)
	}
	return k.orig.of(body)
}

// keyPath names where the innermost object of stack sits, as a.0.b. (keys
// snake_case, array elements by index).
func keyPath(stack []keyFrame, keys []keySeen, body, names []byte) string {
	var b strings.Builder
	for _, f := range stack[:len(stack)-1] {
		switch {
		case !f.object:
			b.WriteString(strconv.Itoa(f.index))
		case f.key >= 0:
			b.Write(keys[f.key].name(body, names))
		default:
			continue
		}
		b.WriteByte('.')
	}
	return b.String()
}

// inPath is "at PATH " for a non-empty path.
func inPath(path string) string {
	if path == "" {
		return ""
	}
	return "at " + strings.TrimSuffix(path, ".") + " "
}

// stringEnd returns the index of the quote that closes the JSON string
// opening at body[i], or len(body) when it is not closed. It reads a short
// stretch byte by byte, stepping over each backslash's escaped byte, then
// jumps to the next quote with bytes.IndexByte (vector instructions: a
// long string is skipped many times faster); that quote closes the string
// unless an odd run of backslashes stands before it. The stretch keeps a
// string dense with escaped quotes at the byte scan's cost.
func stringEnd(body []byte, i int) int {
	const stretch = 32
	j := i + 1
	for j < len(body) {
		for end := min(j+stretch, len(body)); j < end; j++ {
			switch body[j] {
			case '\\':
				j++
			case '"':
				return j
			}
		}
		if j >= len(body) {
			break
		}
		q := bytes.IndexByte(body[j:], '"')
		if q < 0 {
			break
		}
		// j is not inside an escape, so the run of backslashes from j up
		// to the quote decides.
		k := j + q - 1
		for k >= j && body[k] == '\\' {
			k--
		}
		if (j+q-k)%2 == 1 {
			return j + q
		}
		j += q + 1
	}
	return len(body)
}

// isKey reports whether the string closing at body[end] is an object key:
// a colon follows it.
func isKey(body []byte, end int) bool {
	k := end + 1
	for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
		k++
	}
	return k < len(body) && body[k] == ':'
}

// Snake converts a PascalCase or camelCase key to lower snake_case:
// DeviceId and deviceId become device_id, TTLSeconds becomes ttl_seconds.
// A snake_case key is returned unchanged.
func Snake(key string) string {
	return string(appendSnake(make([]byte, 0, len(key)+4), []byte(key)))
}

// appendSnake appends key converted to lower snake_case.
func appendSnake(out, key []byte) []byte {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 && key[i-1] != '_' {
				prev := key[i-1]
				nextLower := i+1 < len(key) && key[i+1] >= 'a' && key[i+1] <= 'z'
				if prev >= 'a' && prev <= 'z' || prev >= '0' && prev <= '9' || (prev >= 'A' && prev <= 'Z' && nextLower) {
					out = append(out, '_')
				}
			}
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return out
}

// Pascal converts a snake_case key to PascalCase, as the C# side names it:
// device_id becomes DeviceId.
func Pascal(key string) string {
	var b strings.Builder
	up := true
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '_' {
			up = true
			continue
		}
		if up && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up = false
		b.WriteByte(c)
	}
	return b.String()
}
