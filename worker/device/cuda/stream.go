//go:build cuda

package cuda

import (
	"context"

	"gorgonia.org/cu"

	"github.com/memworker/memworker/worker/device"
)

// Pipelined copies: pieces queued on Config.CopyStreams streams without a wait
// between them, at most copyInflight of them in flight, each followed by an
// event the host waits on to report it landed. A copy in synchronous
// pieces pays the driver's launch and the host's wake-up between every two
// pieces, with the copy engine idle (on NVLink a 64 MiB piece lasts
// 0.2 ms, so that idle time is a fifth of the copy).
const (
	// DefaultCopyStreams: one stream per direction keeps one copy engine
	// busy; more only interleave pieces on it (measured in BenchmarkCopy).
	DefaultCopyStreams = 1
	copyInflight       = 4
)

// CopyChunks copies n bytes from src to dst as Copy does, in pieces of at
// most chunk bytes that are pipelined on streams, and calls done with each
// piece's length, in order, once the piece has landed. A cancelled context
// stops it between pieces, after the pieces in flight land.
func (b *Backend) CopyChunks(ctx context.Context, dst, src device.Location, n, chunk int64, done func(int64)) error {
	if overlaps(dst, src, n) {
		// Ranges of one memory that overlap are copied whole: a copy in
		// pieces could overwrite source bytes before it reads them.
		if err := b.copy(dst, src, n); err != nil {
			return err
		}
		done(n)
		return nil
	}
	g, err := b.driver(dst, src)
	if err != nil {
		return err
	}
	if g == nil { // host to host: no stream to gain from
		for off := int64(0); off < n; {
			d, s, m, err := b.next(ctx, dst, src, off, n, chunk)
			if err != nil {
				return err
			}
			if err := b.copy(d, s, m); err != nil {
				return err
			}
			done(m)
			off += m
		}
		return nil
	}
	return g.here(func() error { return b.pipeline(ctx, g, dst, src, n, chunk, done) })
}

// driver is the device whose context issues a copy: the one holding device
// memory (the destination's for peer copies); nil for host to host.
func (b *Backend) driver(dst, src device.Location) (*gpu, error) {
	switch {
	case dst.Kind == device.VRAM:
		return b.gpu(dst.Device)
	case src.Kind == device.VRAM:
		return b.gpu(src.Device)
	}
	return nil, nil
}

func overlaps(dst, src device.Location, n int64) bool {
	return dst.Device == src.Device && dst.Kind == src.Kind && dst.Addr < src.Addr+uint64(n) && src.Addr < dst.Addr+uint64(n)
}

// pipeline runs on a thread with the driving device g's context current,
// on g's copy streams (made when it opened: copies that run at once share
// them, in order).
func (b *Backend) pipeline(ctx context.Context, g *gpu, dst, src device.Location, n, chunk int64, done func(int64)) (err error) {
	streams := g.streams
	type landing struct {
		ev cu.Event
		n  int64
	}
	var flying []landing
	land := func() error {
		l := flying[0]
		flying = flying[1:]
		serr := l.ev.Synchronize()
		_ = cu.DestroyEvent(&l.ev)
		if serr != nil {
			return wrap("cuEventSynchronize", serr)
		}
		done(l.n)
		return nil
	}
	defer func() { // what was queued lands before the caller frees anything
		for len(flying) > 0 {
			if lerr := land(); err == nil {
				err = lerr
			}
		}
	}()
	for off, i := int64(0), 0; off < n; i++ {
		d, s, m, err := b.next(ctx, dst, src, off, n, chunk)
		if err != nil {
			return err
		}
		st := streams[i%len(streams)]
		if err := b.copyAsync(d, s, m, st); err != nil {
			return err
		}
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			return wrap("cuEventCreate", err)
		}
		if err := ev.Record(st); err != nil {
			_ = cu.DestroyEvent(&ev)
			return wrap("cuEventRecord", err)
		}
		flying = append(flying, landing{ev, m})
		if len(flying) > copyInflight {
			if err := land(); err != nil {
				return err
			}
		}
		off += m
	}
	return nil
}

// copyAsync queues one piece on st, with the context of the device that
// drives it (driver) current.
func (b *Backend) copyAsync(dst, src device.Location, n int64, st cu.Stream) error {
	switch {
	case src.Kind == device.VRAM && dst.Kind == device.VRAM:
		if src.Device == dst.Device {
			return wrap("cuMemcpyDtoDAsync", cu.MemcpyDtoDAsync(cu.DevicePtr(dst.Addr), cu.DevicePtr(src.Addr), n, st))
		}
		sg, err := b.gpu(src.Device)
		if err != nil {
			return err
		}
		dg, err := b.gpu(dst.Device)
		if err != nil {
			return err
		}
		return wrap("cuMemcpyPeerAsync", cu.MemcpyPeerAsync(cu.DevicePtr(dst.Addr), dg.ctx, cu.DevicePtr(src.Addr), sg.ctx, n, st))
	case src.Kind == device.Pinned:
		h, err := b.hostPtr(src.Addr, n)
		if err != nil {
			return err
		}
		return wrap("cuMemcpyHtoDAsync", cu.MemcpyHtoDAsync(cu.DevicePtr(dst.Addr), h, n, st))
	default:
		h, err := b.hostPtr(dst.Addr, n)
		if err != nil {
			return err
		}
		return wrap("cuMemcpyDtoHAsync", cu.MemcpyDtoHAsync(h, cu.DevicePtr(src.Addr), n, st))
	}
}
