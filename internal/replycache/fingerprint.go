package replycache

import (
	"encoding"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"time"
	"unsafe"
)

// A walk builds one fingerprint.
type walk struct {
	fp []byte
	// now's instant and location: a time equal to it is marked as now,
	// not written, and counted.
	sec  int64
	nsec int
	loc  *time.Location
	nows int
}

// An appender appends the fingerprint of the value at p to w.fp.
type appender func(w *walk, p unsafe.Pointer)

// compiled holds an appender per type, built once. A type that cannot be
// fingerprinted holds an error instead.
var compiled sync.Map // reflect.Type -> compiledType

type compiledType struct {
	append appender
	err    error
}

// appenderOf returns the appender of t, building it the first time.
func appenderOf(t reflect.Type) (appender, error) {
	if c, ok := compiled.Load(t); ok {
		return c.(compiledType).append, c.(compiledType).err
	}
	a, err := compile(t, map[reflect.Type]bool{})
	compiled.Store(t, compiledType{a, err})
	return a, err
}

var (
	timeType      = reflect.TypeFor[time.Time]()
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

// scalar reports whether t's encoding follows from its bytes alone.
func scalar(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return !t.Implements(jsonMarshaler) && !t.Implements(textMarshaler) &&
			!reflect.PointerTo(t).Implements(jsonMarshaler) && !reflect.PointerTo(t).Implements(textMarshaler)
	}
	return false
}

// compile builds the appender of t. Every bit the encoding could depend on
// goes into the fingerprint: scalars as their bytes (floats by their bits,
// so 0 and -0 differ as their encodings do), strings with their length,
// pointers and slices with whether they are nil, then what they point to.
// time.Time is the one marshaler taken in: its instant and zone offset,
// which are all its encoding shows, or only a mark when it is the walk's
// now. Fields the encoder never writes (unexported, json:"-") are left
// out. Maps (iteration order), interfaces (any type) and other marshalers
// (their own logic) are refused: values of such a type are always
// encoded.
func compile(t reflect.Type, open map[reflect.Type]bool) (appender, error) {
	if t == timeType {
		return func(w *walk, p unsafe.Pointer) {
			tm := (*time.Time)(p)
			sec, nsec, loc := tm.Unix(), tm.Nanosecond(), tm.Location()
			if sec == w.sec && nsec == w.nsec && loc == w.loc {
				w.fp = append(w.fp, 1)
				w.nows++
				return
			}
			w.fp = binary.LittleEndian.AppendUint64(append(w.fp, 0), uint64(sec))
			w.fp = binary.LittleEndian.AppendUint32(w.fp, uint32(nsec))
			if loc == time.UTC || loc == time.Local {
				// Locations that live as long as the process: their
				// address names them.
				w.fp = binary.LittleEndian.AppendUint64(w.fp, uint64(uintptr(unsafe.Pointer(loc))))
				return
			}
			// Any other may be collected and its address reused by
			// another zone: what the encoding shows of it is its offset.
			_, offset := tm.Zone()
			w.fp = binary.LittleEndian.AppendUint64(append(w.fp, 2), uint64(int64(offset)))
		}, nil
	}
	if t.Kind() != reflect.Pointer && (t.Implements(jsonMarshaler) || t.Implements(textMarshaler) ||
		reflect.PointerTo(t).Implements(jsonMarshaler) || reflect.PointerTo(t).Implements(textMarshaler)) {
		return nil, fmt.Errorf("%s encodes itself", t)
	}
	if open[t] {
		return nil, fmt.Errorf("%s refers to itself", t)
	}
	open[t] = true
	defer delete(open, t)
	if scalar(t) {
		size := t.Size()
		return func(w *walk, p unsafe.Pointer) {
			w.fp = append(w.fp, unsafe.Slice((*byte)(p), size)...)
		}, nil
	}
	switch t.Kind() {
	case reflect.String:
		return func(w *walk, p unsafe.Pointer) {
			s := *(*string)(p)
			w.fp = append(binary.LittleEndian.AppendUint64(w.fp, uint64(len(s))), s...)
		}, nil
	case reflect.Pointer:
		elem, err := compile(t.Elem(), open)
		if err != nil {
			return nil, err
		}
		return func(w *walk, p unsafe.Pointer) {
			q := *(*unsafe.Pointer)(p)
			if q == nil {
				w.fp = append(w.fp, 0)
				return
			}
			w.fp = append(w.fp, 1)
			elem(w, q)
		}, nil
	case reflect.Slice:
		elem, err := compile(t.Elem(), open)
		if err != nil {
			return nil, err
		}
		size := t.Elem().Size()
		return func(w *walk, p unsafe.Pointer) {
			data, n := *(*unsafe.Pointer)(p), *(*int)(unsafe.Add(p, unsafe.Sizeof(uintptr(0))))
			if data == nil {
				w.fp = append(w.fp, 0) // nil encodes as null, empty as []
				return
			}
			w.fp = binary.LittleEndian.AppendUint64(append(w.fp, 1), uint64(n))
			for i := range n {
				elem(w, unsafe.Add(data, uintptr(i)*size))
			}
		}, nil
	case reflect.Array:
		elem, err := compile(t.Elem(), open)
		if err != nil {
			return nil, err
		}
		n, size := t.Len(), t.Elem().Size()
		return func(w *walk, p unsafe.Pointer) {
			for i := range n {
				elem(w, unsafe.Add(p, uintptr(i)*size))
			}
		}, nil
	case reflect.Struct:
		// Runs of scalar fields are taken as one span of memory: the
		// padding between them may differ between equal values, which
		// costs a miss, never a wrong reply.
		type span struct {
			offset, size uintptr
			append       appender // nil: the span's bytes as they are
		}
		var spans []span
		run := false // the last span is a run of scalars the next may extend
		for i := range t.NumField() {
			f := t.Field(i)
			if (!f.IsExported() && !f.Anonymous) || f.Tag.Get("json") == "-" {
				run = false
				continue // never encoded: it must not count (a time at now would be looked for)
			}
			if scalar(f.Type) {
				if n := len(spans); run {
					spans[n-1].size = f.Offset + f.Type.Size() - spans[n-1].offset
				} else {
					spans = append(spans, span{f.Offset, f.Type.Size(), nil})
				}
				run = true
				continue
			}
			run = false
			a, err := compile(f.Type, open)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", t, f.Name, err)
			}
			spans = append(spans, span{f.Offset, 0, a})
		}
		return func(w *walk, p unsafe.Pointer) {
			for _, s := range spans {
				if s.append == nil {
					w.fp = append(w.fp, unsafe.Slice((*byte)(unsafe.Add(p, s.offset)), s.size)...)
				} else {
					s.append(w, unsafe.Add(p, s.offset))
				}
			}
		}, nil
	}
	return nil, fmt.Errorf("%s: a %s is not fingerprinted", t, t.Kind())
}
