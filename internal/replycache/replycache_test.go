package replycache_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
)

// encode goes through the cache as the worker does: the kept encoding of
// v at now, or v encoded and kept.
func encode(t testing.TB, c *replycache.Cache, v any, now time.Time) (out []byte, hit bool) {
	t.Helper()
	k, ok := replycache.Fingerprint(new(replycache.Scratch), v, now, text(now))
	if !ok {
		t.Fatalf("%T: no fingerprint", v)
	}
	var b bytes.Buffer
	if c.WriteTo(&b, k) != nil {
		return b.Bytes(), true
	}
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c.Store(k, enc)
	return enc, false
}

// text is now as encodings write it.
func text(now time.Time) []byte { return now.AppendFormat(nil, time.RFC3339Nano) }

type sample struct {
	Name   string     `json:"name"`
	Bytes  int64      `json:"bytes"`
	Ratio  float64    `json:"ratio"`
	At     time.Time  `json:"at"`
	Seen   *time.Time `json:"seen,omitempty"`
	List   []int      `json:"list"`
	Nested struct {
		On bool `json:"on"`
	} `json:"nested"`
}

func TestAnEncodingIsKeptWhileItsValueIsTheSame(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 0, 0, 120000000, time.UTC)
	earlier := now.Add(-time.Second)
	base := func(at time.Time) *sample {
		return &sample{Name: "a", Bytes: 1, Ratio: 0.5, At: at, Seen: &earlier, List: []int{1}}
	}
	for _, tc := range []struct {
		name string
		next *sample
		at   time.Time
		hit  bool
	}{
		{"the same value", base(now), now, true},
		{"the same value with its time at a later now", base(now.Add(time.Millisecond)), now.Add(time.Millisecond), true},
		{"its time not at now", base(now.Add(time.Millisecond)), now, false},
		{"a figure changed", func() *sample { s := base(now); s.Bytes = 2; return s }(), now, false},
		{"a float's sign", func() *sample { s := base(now); s.Ratio = 0; return s }(), now, false},
		{"an empty list for a nil one", func() *sample { s := base(now); s.List = nil; return s }(), now, false},
		{"a pointer's target", func() *sample { s := base(now); s.Seen = &now; return s }(), now, false},
		{"a nested field", func() *sample { s := base(now); s.Nested.On = true; return s }(), now, false},
		{"the same instant in another zone", func() *sample { s := base(now); s.Seen = ptr(earlier.In(time.FixedZone("", 5*3600+1800))); return s }(), now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c replycache.Cache
			if _, hit := encode(t, &c, base(now), now); hit {
				t.Fatal("an empty cache had an encoding")
			}
			got, hit := encode(t, &c, tc.next, tc.at)
			want, _ := json.Marshal(tc.next)
			if hit != tc.hit || !bytes.Equal(got, want) {
				t.Errorf("hit %v, want %v:\n got %s\nwant %s", hit, tc.hit, got, want)
			}
		})
	}
	// -0 and 0 encode differently, and so are told apart.
	var c replycache.Cache
	encode(t, &c, &sample{Ratio: 0}, now)
	if got, hit := encode(t, &c, &sample{Ratio: math.Copysign(0, -1)}, now); hit {
		t.Errorf("-0 took 0's encoding: %s", got)
	}
}

func ptr[T any](v T) *T { return &v }

// hidden has a field the encoder never writes.
type hidden struct {
	Internal time.Time `json:"-"`
	Label    string    `json:"label"`
}

// TestFieldsNeverEncodedDoNotCount: a time at now in a field the encoder
// skips must not be taken for one that it writes, or now's text in another
// field would be replaced by a later now.
func TestFieldsNeverEncodedDoNotCount(t *testing.T) {
	n1 := time.Date(2026, 12, 6, 22, 0, 0, 1, time.UTC)
	n2 := n1.Add(time.Second)
	var c replycache.Cache
	label := n1.Format(time.RFC3339Nano)
	encode(t, &c, &hidden{Internal: n1, Label: label}, n1)
	v := &hidden{Internal: n2, Label: label}
	got, _ := encode(t, &c, v, n2)
	if want, _ := json.Marshal(v); !bytes.Equal(got, want) {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestZonesCountByTheirOffset: a zone other than UTC and Local is
// fingerprinted by its offset, not its address, which a collected zone
// leaves to the next one.
func TestZonesCountByTheirOffset(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	instant := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := func(loc *time.Location) []byte {
		k, _ := replycache.Fingerprint(new(replycache.Scratch), &sample{At: instant.In(loc)}, now, text(now))
		return bytes.Clone(k.Bytes())
	}
	if !bytes.Equal(key(time.FixedZone("", 5*3600+1800)), key(time.FixedZone("", 5*3600+1800))) { // not hour-aligned: two zones, not one cached
		t.Error("two zones of the same offset differ: a zone's address counted")
	}
	if bytes.Equal(key(time.FixedZone("", 5*3600+1800)), key(time.FixedZone("", 4*3600+1800))) {
		t.Error("zones of different offsets are the same")
	}
}

// TestPollersThatDifferEachKeepTheirs: the operator and tenants polling
// one device see different figures; each finds its own encoding kept,
// and a fifth evicts the oldest.
func TestPollersThatDifferEachKeepTheirs(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	var c replycache.Cache
	views := func(n int) []*sample {
		var out []*sample
		for i := range n {
			out = append(out, &sample{Name: fmt.Sprint("tenant-", i), Bytes: int64(i)})
		}
		return out
	}
	for _, v := range views(4) {
		encode(t, &c, v, now)
	}
	for _, v := range views(4) {
		if _, hit := encode(t, &c, v, now); !hit {
			t.Errorf("%s: not kept beside the others", v.Name)
		}
	}
	encode(t, &c, &sample{Name: "a fifth"}, now)
	hits := 0
	for _, v := range views(4) {
		if _, hit := encode(t, &c, v, now); hit {
			hits++
		}
	}
	if hits == 4 {
		t.Error("a fifth encoding evicted none: the cache is unbounded")
	}
}

// fill sets every field of v, reached through pointers and slices (of one
// element), to a value of its own, counting from *n.
func fill(v reflect.Value, n *int) {
	*n++
	switch {
	case v.Type() == reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Unix(int64(*n), 0).UTC()))
		return
	case v.Type() == reflect.TypeFor[json.RawMessage]():
		v.SetBytes([]byte(fmt.Sprint(*n)))
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(*n%2 == 0)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint64, reflect.Uint32:
		v.SetUint(uint64(*n))
	case reflect.Float64:
		v.SetFloat(float64(*n) + 0.5)
	case reflect.String:
		v.SetString(fmt.Sprint("s", *n))
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), n)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	}
}

// leaves lists the paths (field and element indexes) to every leaf of v.
func leaves(v reflect.Value, path []int, out *[][]int) {
	leaf := func() { *out = append(*out, append([]int(nil), path...)) }
	switch {
	case v.Type() == reflect.TypeFor[time.Time](), v.Type() == reflect.TypeFor[json.RawMessage]():
		leaf()
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		leaf() // nil
		leaves(v.Elem(), append(path, 0), out)
	case reflect.Slice:
		leaf() // nil
		leaves(v.Index(0), append(path, 0), out)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				leaves(v.Field(i), append(path, i), out)
			}
		}
	default:
		leaf()
	}
}

// change changes the leaf of v at path: a pointer or slice to nil, a bool
// to its opposite, a time by a nanosecond (variant 0) or to another zone
// at the same instant (variant 1), anything else to the zero value (filled
// numbers and strings are never zero).
func change(v reflect.Value, path []int, variant int) {
	for _, i := range path {
		switch v.Kind() {
		case reflect.Pointer:
			v = v.Elem()
		case reflect.Slice:
			v = v.Index(i)
		default:
			v = v.Field(i)
		}
	}
	switch {
	case v.Type() == reflect.TypeFor[time.Time]() && variant == 0:
		v.Set(reflect.ValueOf(v.Interface().(time.Time).Add(time.Nanosecond)))
	case v.Type() == reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(v.Interface().(time.Time).In(time.FixedZone("", 3600))))
	case v.Kind() == reflect.Bool:
		v.SetBool(!v.Bool())
	default:
		v.SetZero()
	}
}

// TestEveryFieldOfTheKeptRepliesCounts changes each field of the kept
// replies' values, one at a time, down to their lists' elements: the
// encoding changes, and so must the fingerprint, or a stale reply would be
// sent. A field added to these types later is covered the day it is added.
func TestEveryFieldOfTheKeptRepliesCounts(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	for _, v := range []any{&subjects.StatusReply{}, &subjects.Usage{}, &subjects.Pressure{}, &subjects.Allocation{}} {
		typ := reflect.TypeOf(v).Elem()
		filled := func() reflect.Value {
			p := reflect.New(typ)
			n := 0
			fill(p.Elem(), &n)
			return p
		}
		base := filled()
		baseKey, ok := replycache.Fingerprint(new(replycache.Scratch), base.Interface(), now, text(now))
		if !ok {
			t.Fatalf("%s: no fingerprint", typ)
		}
		baseJSON, _ := json.Marshal(base.Interface())
		var paths [][]int
		leaves(base.Elem(), nil, &paths)
		if len(paths) < 10 {
			t.Fatalf("%s: only %d fields found", typ, len(paths))
		}
		for _, path := range paths {
			for variant := range 2 {
				p := filled()
				change(p.Elem(), path, variant)
				changed, _ := json.Marshal(p.Interface())
				if bytes.Equal(changed, baseJSON) {
					continue // omitempty hid the change (or variant 1 of no time): the same encoding may be kept
				}
				k, ok := replycache.Fingerprint(new(replycache.Scratch), p.Interface(), now, text(now))
				if !ok || bytes.Equal(k.Bytes(), baseKey.Bytes()) {
					t.Errorf("%s: changing the field at %v (variant %d) left the fingerprint as it was", typ, path, variant)
				}
			}
		}
	}
}

type selfEncoding struct{ V int }

func (selfEncoding) MarshalJSON() ([]byte, error) { return []byte(`1`), nil }

func TestValuesItCannotFingerprintAreEncodedEveryTime(t *testing.T) {
	now := time.Now()
	var nilSample *sample
	for _, v := range []any{
		sample{},                           // not a pointer
		nilSample,                          // nil
		nil,                                // nothing
		&map[string]int{"a": 1},            // iteration order
		&struct{ V any }{1},                // any type
		&struct{ V selfEncoding }{},        // its own logic
		&struct{ V []map[string]int }{nil}, // deep inside
	} {
		if _, ok := replycache.Fingerprint(new(replycache.Scratch), v, now, text(now)); ok {
			t.Errorf("%#v: fingerprinted", v)
		}
	}
}

// TestNowStandsOnlyWhereItsTimesAre: a string that reads like now's time
// must not be taken for one, or a later now would be written into it.
func TestNowStandsOnlyWhereItsTimesAre(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 0, 0, 5, time.UTC)
	s := &sample{Name: now.Format(time.RFC3339Nano), At: now}
	var c replycache.Cache
	encode(t, &c, s, now)
	later := now.Add(time.Second)
	s.At = later
	got, hit := encode(t, &c, s, later)
	want, _ := json.Marshal(s)
	if hit || !bytes.Equal(got, want) {
		t.Errorf("hit %v:\n got %s\nwant %s", hit, got, want)
	}
}

// TestReadHandlersShareACache: handlers of one device use its cache at
// once, with different values and nows; each gets its own value's bytes.
func TestReadHandlersShareACache(t *testing.T) {
	var c replycache.Cache
	base := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			var fp replycache.Scratch
			for i := range 2000 {
				now := base.Add(time.Duration(i/10) * time.Microsecond)
				v := &sample{Name: strings.Repeat("x", g%2), Bytes: int64(i % 3), At: now}
				k, ok := replycache.Fingerprint(&fp, v, now, text(now))
				if !ok {
					t.Error("no fingerprint")
					return
				}
				var b bytes.Buffer
				if c.WriteTo(&b, k) == nil {
					enc, _ := json.Marshal(v)
					c.Store(k, enc)
					b.Write(enc)
				}
				if want, _ := json.Marshal(v); !bytes.Equal(b.Bytes(), want) {
					t.Errorf("got %s, want %s", b.Bytes(), want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkKeptStatus: a status's fingerprint and kept encoding against
// encoding it with goccy/go-json, as the worker does.
func BenchmarkKeptStatus(b *testing.B) {
	now := time.Now().UTC()
	v := &subjects.StatusReply{}
	n := 0
	fill(reflect.ValueOf(v).Elem(), &n)
	v.Usage.SampledAt, v.Pressure.SampledAt = now, now
	var c replycache.Cache
	encode(b, &c, v, now)
	nowText := text(now)
	b.Run("kept", func(b *testing.B) {
		var fp replycache.Scratch
		var buf bytes.Buffer
		b.ReportAllocs()
		for b.Loop() {
			k, _ := replycache.Fingerprint(&fp, v, now, nowText)
			buf.Reset()
			if c.WriteTo(&buf, k) == nil {
				b.Fatal("not kept")
			}
		}
	})
	b.Run("encoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := gojson.Marshal(v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
