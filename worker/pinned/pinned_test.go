package pinned_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/pinned"
)

const MiB = int64(1) << 20

func newPool(t *testing.T, cfg pinned.Config) (*pinned.Pool, *sim.Backend) {
	t.Helper()
	b := sim.New(sim.Config{Devices: []sim.Spec{{Name: "gpu", TotalBytes: 1 << 30}}, PinnedBytes: 1 << 30})
	p, err := pinned.New(context.Background(), b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, b
}

// held is what the backend has page-locked: the truth the pool's figures
// are checked against.
func held(b *sim.Backend) (n int64) {
	for _, s := range b.Segments(0, device.Pinned) {
		n += s.Size
	}
	return n
}

// TestFreedMemoryIsReusedWithoutPinningMore: what is given back stays
// page-locked and serves the next request of a size it holds.
func TestFreedMemoryIsReusedWithoutPinningMore(t *testing.T) {
	ctx := context.Background()
	p, b := newPool(t, pinned.Config{})
	a, err := p.AllocSegment(ctx, 64*MiB)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.FreeSegment(ctx, a); err != nil {
		t.Fatal(err)
	}
	again, err := p.AllocSegment(ctx, 48*MiB)
	if err != nil {
		t.Fatal(err)
	}
	f := p.Figures()
	if again != a || f.Requests != 2 || f.Hits != 1 || f.LockedBytes != 64*MiB || held(b) != 64*MiB {
		t.Errorf("second request at %#x (first %#x), figures %+v, backend holds %d: want the same memory, one hit, 64 MiB locked once", again, a, f, held(b))
	}
	if f.PinnedBytes != 64*MiB || f.InUseBytes < 48*MiB || f.CachedBytes != f.PinnedBytes-f.InUseBytes {
		t.Errorf("figures %+v", f)
	}
	if err := p.FreeSegment(ctx, again); err != nil {
		t.Fatal(err)
	}
	if err := p.FreeSegment(ctx, again); !errors.Is(err, device.ErrNotFound) {
		t.Errorf("freeing twice: %v, want not found", err)
	}
	// The same size again, as every transfer of one allocation asks.
	for range 3 {
		a, err := p.AllocSegment(ctx, 64*MiB)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.FreeSegment(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if f := p.Figures(); f.LockedBytes != 64*MiB || f.Hits != 4 {
		t.Errorf("three more 64 MiB segments: %+v, want all from the first 64 MiB", f)
	}
	if err := p.Close(ctx); err != nil || held(b) != 0 {
		t.Errorf("close: %v, backend still holds %d", err, held(b))
	}
}

// TestPrepinnedMemoryServesTheFirstRequests: --pinned-pool is page-locked
// at start and requests within it lock nothing more.
func TestPrepinnedMemoryServesTheFirstRequests(t *testing.T) {
	ctx := context.Background()
	p, b := newPool(t, pinned.Config{Prepin: 256 * MiB, Max: 512 * MiB})
	if f := p.Figures(); f.PinnedBytes != 256*MiB || f.CachedBytes != 256*MiB || f.PrepinBytes != 256*MiB || f.MaxBytes != 512*MiB || held(b) != 256*MiB {
		t.Fatalf("at start: %+v, backend holds %d", f, held(b))
	}
	for range 3 {
		if _, err := p.AllocSegment(ctx, 80*MiB); err != nil {
			t.Fatal(err)
		}
	}
	if f := p.Figures(); f.Hits != 3 || f.LockedBytes != 256*MiB || held(b) != 256*MiB {
		t.Errorf("three 80 MiB segments: %+v, backend holds %d: want all from the pre-pinned 256 MiB", f, held(b))
	}
}

// TestTheCapIsKept: past --pinned-max the pool gives back its empty
// segments before it locks more, and refuses what still does not fit,
// saying so.
func TestTheCapIsKept(t *testing.T) {
	ctx := context.Background()
	p, b := newPool(t, pinned.Config{Max: 100 * MiB})
	a, err := p.AllocSegment(ctx, 60*MiB)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.AllocSegment(ctx, 60*MiB)
	if !errors.Is(err, device.ErrOutOfMemory) || !strings.Contains(err.Error(), "--pinned-max 100 MiB") {
		t.Errorf("over the cap: %v, want out of memory naming the cap", err)
	}
	if err := p.FreeSegment(ctx, a); err != nil {
		t.Fatal(err)
	}
	// The cached 60 MiB cannot serve 80 MiB; it goes back so 80 MiB fit.
	if _, err := p.AllocSegment(ctx, 80*MiB); err != nil {
		t.Fatalf("80 MiB after freeing 60 MiB under a 100 MiB cap: %v", err)
	}
	if f := p.Figures(); f.PinnedBytes != 80*MiB || held(b) != 80*MiB {
		t.Errorf("figures %+v, backend holds %d: want only the 80 MiB segment", f, held(b))
	}
}

func TestPrepinOverTheCapIsRefused(t *testing.T) {
	b := sim.New(sim.Default(1, 1<<30))
	if _, err := pinned.New(context.Background(), b, pinned.Config{Prepin: 200 * MiB, Max: 100 * MiB}); err == nil {
		t.Error("pre-pinning 200 MiB under a 100 MiB cap was accepted")
	}
	if _, err := pinned.New(context.Background(), b, pinned.Config{Prepin: -1}); err == nil {
		t.Error("a negative size was accepted")
	}
	if held(b) != 0 {
		t.Errorf("refused pools hold %d bytes", held(b))
	}
}

// TestAheadPinsWhatTheNextOffloadNeeds: Ahead page-locks only what the pool
// lacks of what it is asked to hold ready, within the cap; an offload then
// takes it without pinning more; Behind gives back what no offload took,
// and the memory the pool held before stays.
func TestAheadPinsWhatTheNextOffloadNeeds(t *testing.T) {
	ctx := context.Background()
	p, b := newPool(t, pinned.Config{Prepin: 32 * MiB, Max: 256 * MiB})
	if err := p.Ahead(ctx, 16*MiB); err != nil || held(b) != 32*MiB {
		t.Fatalf("ahead of 16 MiB with 32 MiB ready: %v, backend holds %d MiB", err, held(b)/MiB)
	}
	if err := p.Ahead(ctx, 96*MiB); err != nil {
		t.Fatal(err)
	}
	if f := p.Figures(); held(b) != 96*MiB || f.CachedBytes != 96*MiB || f.AheadBytes != 64*MiB || f.Requests != 0 {
		t.Fatalf("ahead of 96 MiB: backend holds %d MiB, figures %+v", held(b)/MiB, f)
	}
	if err := p.Ahead(ctx, 1024*MiB); err != nil {
		t.Fatal(err)
	}
	if held(b) != 256*MiB {
		t.Fatalf("ahead past the cap: backend holds %d MiB, want the cap, 256", held(b)/MiB)
	}
	// An offload takes 160 MiB of what is ready: no more is pinned.
	a, err := p.AllocSegment(ctx, 160*MiB)
	if err != nil {
		t.Fatal(err)
	}
	if f := p.Figures(); held(b) != 256*MiB || f.Hits != 1 || f.AheadBytes != 64*MiB {
		t.Fatalf("an offload after pinning ahead: backend holds %d MiB, figures %+v", held(b)/MiB, f)
	}
	if err := p.Behind(ctx); err != nil {
		t.Fatal(err)
	}
	if f := p.Figures(); f.AheadBytes != 0 || held(b) > 256*MiB || f.InUseBytes < 160*MiB {
		t.Fatalf("behind: backend holds %d MiB, figures %+v", held(b)/MiB, f)
	}
	if err := p.FreeSegment(ctx, a); err != nil {
		t.Fatal(err)
	}
	// With nothing taken, Behind gives back all that Ahead pinned, and the
	// memory pinned at start stays.
	p, b = newPool(t, pinned.Config{Prepin: 32 * MiB})
	if err := p.Ahead(ctx, 96*MiB); err != nil || held(b) != 96*MiB {
		t.Fatalf("ahead: %v, backend holds %d MiB", err, held(b)/MiB)
	}
	if err := p.Behind(ctx); err != nil {
		t.Fatal(err)
	}
	if f := p.Figures(); held(b) != 32*MiB || f.CachedBytes != 32*MiB || f.AheadBytes != 0 {
		t.Errorf("behind after an unused ahead: backend holds %d MiB, figures %+v; want the 32 MiB pinned at start", held(b)/MiB, f)
	}
}

// TestAheadPinsWhatTheCacheLacks: with 64 MiB pinned at start, asking the
// pool to hold 96 MiB ready leaves it holding 96 MiB ready (a cached block
// larger than the shortfall does not make it up), and the hit ratio counts
// offloads' requests only.
func TestAheadPinsWhatTheCacheLacks(t *testing.T) {
	ctx := context.Background()
	p, b := newPool(t, pinned.Config{Prepin: 64 * MiB, Max: 256 * MiB})
	if err := p.Ahead(ctx, 96*MiB); err != nil {
		t.Fatal(err)
	}
	if f := p.Figures(); f.CachedBytes < 96*MiB || f.Requests != 0 || f.Hits != 0 {
		t.Errorf("after Ahead(96 MiB) over 64 MiB pinned at start: backend holds %d MiB, figures %+v; want 96 MiB ready", held(b)/MiB, f)
	}
}

// TestAheadBytesCountOnlyMemoryPinnedAhead: once an offload takes the
// segment pinned ahead, nothing is ahead, whatever else the pool caches.
func TestAheadBytesCountOnlyMemoryPinnedAhead(t *testing.T) {
	ctx := context.Background()
	p, _ := newPool(t, pinned.Config{Prepin: 32 * MiB, Max: 256 * MiB})
	if err := p.Ahead(ctx, 96*MiB); err != nil { // 64 MiB more, a segment of its own
		t.Fatal(err)
	}
	a, err := p.AllocSegment(ctx, 64*MiB) // an offload takes it (best fit: the 64 MiB segment)
	if err != nil {
		t.Fatal(err)
	}
	defer p.FreeSegment(ctx, a)
	if f := p.Figures(); f.AheadBytes != 0 {
		t.Errorf("the segment pinned ahead is in use; figures %+v: AheadBytes counts the memory pinned at start", f)
	}
}
