package contract

import (
	"bytes"
	"encoding/json"
)

// obj is a JSON object that keeps its keys in the order they were set, so
// the document reads in a sensible order and regenerates byte for byte.
type obj []kv

type kv struct {
	k string
	v any
}

// set sets key k to v, in place when k is there.
func (o *obj) set(k string, v any) {
	for i := range *o {
		if (*o)[i].k == k {
			(*o)[i].v = v
			return
		}
	}
	*o = append(*o, kv{k, v})
}

// with is o with k set to v.
func (o obj) with(k string, v any) obj {
	o.set(k, v)
	return o
}

func (o obj) has(k string) bool {
	for _, p := range o {
		if p.k == k {
			return true
		}
	}
	return false
}

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(p.k)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(p.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
