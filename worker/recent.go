package worker

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// deviceMu is a device's lock. It counts the times it was let go by
// anything but a read: every mutation, the monitor's sampling, expiry,
// transfers, the admission queue, whatever holds it. A read lets go with
// unlockRead: a read changes nothing of the device but its driver
// readings, which replies name on their own (ledger.Readings).
type deviceMu struct {
	sync.Mutex
	changes uint64
}

// Unlock lets go of the lock, counting a change.
func (m *deviceMu) Unlock() {
	m.changes++
	m.Mutex.Unlock()
}

// unlockRead lets go of the lock after a read.
func (m *deviceMu) unlockRead() { m.Mutex.Unlock() }

// recent keeps a device's latest replies to one of keptReplies, each with
// what it was built from, so that a request that would build the same reply
// again is answered with it, without building it: the reply as it would be
// built now. At one client a request at a time
// meets the worker's code cold (its caches taken by the server, the client
// and the kernel in between), and building a status cost about 10 µs on a
// 16-core host (docs/performance.md); a kept reply is written in a
// fraction of that.
//
// A reply is the same while the device's lock was held by nothing but
// reads (deviceMu), the device's readings find it as they did
// (ledger.Device.Fresh: a due reading is taken, as a build would), the
// host's pinned pool is the same, and the
// request is the same: its caller and its data, byte for byte.
type recent struct {
	kept [recentKept]atomic.Pointer[recentReply]
	next atomic.Uint32
	// telemetry: the op's reply shows the device's processes.
	telemetry bool
	// nows is how many times the op's reply holds the request's now by
	// construction (sampled_at): a reply that holds it more often was
	// built from something read or changed at that very moment (a
	// reading's time, the moment the level changed), which a reply built
	// later would not show as its own now. It is not kept.
	nows int
}

// recentKept is how many replies each device keeps per operation: the
// operator's and a few tenants' pollers each find theirs.
const recentKept = 4

// recentReply is a reply and what it was built from. It is never changed
// once kept.
type recentReply struct {
	who      ledger.Who
	data     []byte
	changes  uint64
	readings ledger.Readings
	pinned   *subjects.PinnedPool
	tu       *subjects.TenantUsage
	entry    *replycache.Entry
}

// newRecent returns the replies kept for each of keptReplies.
func newRecent() map[subjects.Op]*recent {
	m := make(map[subjects.Op]*recent, len(keptReplies))
	for _, op := range keptReplies {
		m[op] = &recent{telemetry: op != subjects.GetPressure, nows: 1}
	}
	m[subjects.GetStatus].nows = 2 // the usage's and the pressure's
	return m
}

// find returns the kept reply to who's request with data on g at call's
// now, if one holds; pinned is the host's pinned pool now. It takes a due
// reading of device truth, as a build would, and returns the driver's error
// when that fails: the error a build would return. The caller holds g.mu.
func (r *recent) find(ctx context.Context, g *gpu, call ledger.Call, data []byte, pinned *subjects.PinnedPool) (*recentReply, error) {
	if r == nil {
		return nil, nil
	}
	read := false
	for i := range r.kept {
		x := r.kept[i].Load()
		if x == nil || x.who != call.Who || x.changes != g.mu.changes || x.pinned != pinned || !bytes.Equal(x.data, data) {
			continue
		}
		if !read { // once, as a build would: a device that fails is asked once a request
			if err := g.ReadDue(ctx, call.Now); err != nil {
				return nil, err
			}
			read = true
		}
		if g.Fresh(x.readings, call.Now, r.telemetry) {
			return x, nil
		}
	}
	return nil, nil
}

// stamp is what a reply built now, under g.mu, is built from; pinned is
// the pinned pool as it was before the reply was built. It is kept once
// the reply is encoded (keep); nil when it is not to be.
func (r *recent) stamp(g *gpu, call ledger.Call, data []byte, pinned *subjects.PinnedPool, tu *subjects.TenantUsage) *recentReply {
	if r == nil || len(data) > maxRecentData {
		return nil
	}
	return &recentReply{who: call.Who, data: data, changes: g.mu.changes, readings: g.Readings(), pinned: pinned, tu: tu}
}

// maxRecentData bounds the request data a recent reply is kept for: a
// read asks for a few flags, so what is longer is not worth keeping.
const maxRecentData = 1 << 10

// keep keeps x, once its reply is encoded as e (nil: not kept).
func (r *recent) keep(x *recentReply, e *replycache.Entry) {
	if r == nil || x == nil || e == nil || e.Nows() != r.nows {
		return
	}
	x.data, x.entry = bytes.Clone(x.data), e // the request's data lives as long as its request
	r.kept[r.next.Add(1)%recentKept].Store(x)
}
