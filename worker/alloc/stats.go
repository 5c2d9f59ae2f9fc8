package alloc

// Stats counts what a pool holds and has done.
type Stats struct {
	AllocatedBytes     int64 // sum of in-use block sizes
	RequestedBytes     int64 // sum of sizes asked for by in-use blocks
	ReservedBytes      int64 // memory held: segment sizes, or what growable ones map
	PeakAllocatedBytes int64
	PeakReservedBytes  int64
	Segments           int // growable ones included, whatever they map
	ActiveBlocks       int
	CachedBlocks       int
	AllocRequests      int64
	CacheHits          int64 // requests served without a new segment
	SegmentAllocs      int64
	SegmentFrees       int64
	OOMRetries         int64 // times the Source ran out and cached segments were released
}

// CacheHitRatio is the share of requests served from cached blocks.
func (s Stats) CacheHitRatio() float64 {
	if s.AllocRequests == 0 {
		return 0
	}
	return float64(s.CacheHits) / float64(s.AllocRequests)
}

// Fragmentation describes the free space inside reserved segments.
type Fragmentation struct {
	FreeBytes   int64
	LargestFree int64
	FreeBlocks  int
	Segments    int
	Ratio       float64 // 1 - LargestFree/FreeBytes; 0 when there is no free space
	// EmptySegments counts segments holding no allocated block;
	// ReleasableBytes is what Release would give back to the device now:
	// empty segments and, in growable segments, free whole chunks.
	EmptySegments   int
	ReleasableBytes int64
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats { return p.stats }

// Fragmentation measures the pool's free space.
func (p *Pool) Fragmentation() Fragmentation {
	f := Fragmentation{Segments: len(p.segments), FreeBlocks: p.stats.CachedBlocks}
	f.FreeBytes = p.stats.ReservedBytes - p.stats.AllocatedBytes
	for _, t := range []bool{true, false} {
		if b, ok := p.tree(t).Max(); ok && b.size > f.LargestFree {
			f.LargestFree = b.size
		}
	}
	f.EmptySegments, f.ReleasableBytes = p.releasable()
	if f.FreeBytes > 0 {
		f.Ratio = 1 - float64(f.LargestFree)/float64(f.FreeBytes)
	}
	return f
}
