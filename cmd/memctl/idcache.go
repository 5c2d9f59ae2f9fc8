package main

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// idCacheSize bounds the id→device cache file (newest kept).
const idCacheSize = 4096

// idCache remembers which device holds the allocations memctl made or
// found, so free, renew and transfer ask that device directly instead of
// gathering the whole fleet (which waits for every node, and out the
// fleet's stall timeout when some node cannot be known to be the last).
// It is a hint: every cached device is asked whether it holds the id, and
// a miss falls back to the fleet. A file it cannot read or write only
// costs the fleet request.
type idCache struct {
	path  string
	dirty bool
	Order []string          `json:"order"` // oldest first
	Dev   map[string]string `json:"devices"`
}

// loadIDCache reads dir/ids.json; dir "" is the user's cache folder.
func loadIDCache(dir string) *idCache {
	c := &idCache{Dev: map[string]string{}}
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return c
		}
		dir = filepath.Join(base, "memctl")
	}
	c.path = filepath.Join(dir, "ids.json")
	if b, err := os.ReadFile(c.path); err == nil && json.Unmarshal(b, c) == nil && c.Dev != nil {
		return c
	}
	c.Order, c.Dev = nil, map[string]string{}
	return c
}

func (c *idCache) put(id, dev string) {
	if _, ok := c.Dev[id]; !ok {
		c.Order = append(c.Order, id)
	}
	c.Dev[id] = dev
	c.dirty = true
	for len(c.Order) > idCacheSize {
		delete(c.Dev, c.Order[0])
		c.Order = c.Order[1:]
	}
}

func (c *idCache) forget(ids ...string) {
	for _, id := range ids {
		if _, ok := c.Dev[id]; ok {
			delete(c.Dev, id)
			c.dirty = true
		}
	}
	kept := c.Order[:0]
	for _, id := range c.Order {
		if _, ok := c.Dev[id]; ok {
			kept = append(kept, id)
		}
	}
	c.Order = kept
}

// save writes a changed cache atomically (a rename), best effort.
func (c *idCache) save() {
	if c.path == "" || !c.dirty {
		return
	}
	b, err := json.Marshal(c)
	if err != nil || os.MkdirAll(filepath.Dir(c.path), 0o700) != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), "ids-*.json")
	if err != nil {
		return
	}
	_, werr := tmp.Write(b)
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), c.path) != nil {
		_ = os.Remove(tmp.Name())
	}
}
