package subjects

import (
	"bytes"
	"strconv"
	"strings"

	gojson "github.com/goccy/go-json"
)

// needsKeyNormalising reports whether some object key in body holds an
// upper-case letter. It is a cheap scan so the common snake_case request
// skips the rewrite.
func needsKeyNormalising(body []byte) bool {
	for i := 0; i < len(body); i++ {
		if body[i] != '"' {
			continue
		}
		end := stringEnd(body, i)
		if end < len(body) && isKey(body, end) && hasUpper(body[i+1:end]) {
			return true
		}
		i = end
	}
	return false
}

// normaliseKeys rewrites every object key of body to snake_case in one pass
// over the bytes. Everything else is copied as it is, so values, nesting
// and any malformation reach the strict decoder untouched, and it reports
// them. Two spellings of one key in an object (SizeBytes and size_bytes)
// are refused, since which one counts would be a guess.
func normaliseKeys(body []byte) ([]byte, error) {
	out := make([]byte, 0, len(body)+len(body)/8)
	var stack []keyFrame
	var keys []keySeen
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '"':
			end := stringEnd(body, i)
			if end >= len(body) || !isKey(body, end) {
				out = append(out, body[i:min(end+1, len(body))]...)
				i = end
				continue
			}
			k := keySeen{orig: body[i+1 : end]}
			if bytes.IndexByte(k.orig, '\\') < 0 {
				k.at = len(out) + 1
				out = append(appendSnake(append(out, '"'), k.orig), '"')
			} else {
				var unescaped string
				if err := gojson.Unmarshal(body[i:end+1], &unescaped); err != nil {
					return nil, describeJSONError(err)
				}
				quoted, err := gojson.Marshal(Snake(unescaped))
				if err != nil {
					return nil, err
				}
				k.orig, k.at = []byte(unescaped), len(out)+1
				out = append(out, quoted...)
			}
			k.end = len(out) - 1
			i = end
			n := len(stack)
			if n == 0 || !stack[n-1].object {
				continue
			}
			f := &stack[n-1]
			for _, prev := range keys[f.first:] {
				if bytes.Equal(out[prev.at:prev.end], out[k.at:k.end]) && !bytes.Equal(prev.orig, k.orig) {
					return nil, Invalid("key %s appears twice (as %s and %s)",
						keyPath(stack, keys, out)+string(out[k.at:k.end]), quote(string(prev.orig)), quote(string(k.orig)))
				}
			}
			f.key = len(keys)
			keys = append(keys, k)
		case '{', '[':
			stack = append(stack, keyFrame{object: c == '{', first: len(keys), key: -1})
			out = append(out, c)
		case '}', ']':
			if n := len(stack); n > 0 {
				keys = keys[:stack[n-1].first]
				stack = stack[:n-1]
			}
			out = append(out, c)
		case ',':
			if n := len(stack); n > 0 && !stack[n-1].object {
				stack[n-1].index++
			}
			out = append(out, c)
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

// keyFrame is an object or array normaliseKeys is inside.
type keyFrame struct {
	object bool
	index  int // arrays: the element being read
	first  int // objects: where their keys start in the keys seen
	key    int // objects: the key being read, in the keys seen; -1 before the first
}

// keySeen is a key of an open object.
type keySeen struct {
	at, end int    // the snake_case key, in the output
	orig    []byte // as the client spelled it, unescaped
}

// keyPath names where the innermost object of stack sits, as a.0.b. (keys
// snake_case, array elements by index).
func keyPath(stack []keyFrame, keys []keySeen, out []byte) string {
	var b strings.Builder
	for _, f := range stack[:len(stack)-1] {
		switch {
		case !f.object:
			b.WriteString(strconv.Itoa(f.index))
		case f.key >= 0:
			b.Write(out[keys[f.key].at:keys[f.key].end])
		default:
			continue
		}
		b.WriteByte('.')
	}
	return b.String()
}

// stringEnd returns the index of the quote that closes the JSON string
// opening at body[i], or len(body) when it is not closed.
func stringEnd(body []byte, i int) int {
	for j := i + 1; j < len(body); j++ {
		switch body[j] {
		case '\\':
			j++
		case '"':
			return j
		}
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

func hasUpper(b []byte) bool {
	for _, c := range b {
		if c >= 'A' && c <= 'Z' {
			return true
		}
	}
	return false
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
