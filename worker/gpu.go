package worker

import (
	"time"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/replay"
)

// gpu is one device the worker serves: its ledger, and what the NATS shell
// keeps beside it. mu serialises every call of the ledger and guards the
// rest.
type gpu struct {
	mu deviceMu
	*ledger.Device
	replays *replay.Cache
	// kept holds the encodings of keptReplies' last replies; the map is
	// not changed after New.
	kept map[subjects.Op]*replycache.Cache
	// recent holds the latest replies of keptReplies with what they were
	// built from, to send again while that stays the same (recent.go); the
	// map is not changed after New.
	recent map[subjects.Op]*recent
	// waiting are the requests waiting for the ledger's decision.
	waiting map[ledger.Ticket]*pending
	// lastEvent is when the last pressure event was queued; unavailable is
	// set while the device does not answer.
	lastEvent   time.Time
	unavailable bool
	// released is what auto-release gave back since the last event.
	released int64
	// ahead is what the pinned pool is to hold ready for an offload of the
	// device (pinahead.go), worked out at aheadAt.
	ahead   int64
	aheadAt time.Time
	// truth keeps the reading of device truth fresh while requests come
	// (truth.go).
	truth *truthReader
}

func (w *Worker) gpu(id string) *gpu {
	for _, g := range w.gpus {
		if g.ID() == id {
			return g
		}
	}
	return nil
}
