package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
)

// TestTransferHistory: finished transfers are known for the retention and
// within the byte bound, oldest forgotten first; queued or running ones
// are never forgotten.
func TestTransferHistory(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tr := newTransfers(time.Hour, 3*jobBytes(subjects.TransferStatus{}))
	running := &job{status: subjects.TransferStatus{TransferID: "running"}}
	tr.add(running)
	for i := range 5 {
		s := subjects.TransferStatus{TransferID: fmt.Sprint("t", i)}
		tr.add(&job{status: s})
		tr.finish(s, t0.Add(time.Duration(i)*time.Minute))
	}
	for id, want := range map[string]bool{"t0": false, "t1": false, "t2": true, "t3": true, "t4": true, "running": true} {
		if got := tr.get(id, t0.Add(5*time.Minute)) != nil; got != want {
			t.Errorf("within the hour, %s known: %v, want %v", id, got, want)
		}
	}
	later := t0.Add(2 * time.Hour)
	if tr.get("t4", later) != nil || tr.get("running", later) == nil {
		t.Errorf("two hours later: a finished job is still known, or the running one is not")
	}
	if tr.done.Len() != 0 || tr.doneBytes != 0 {
		t.Errorf("history holds %d jobs, %d bytes after they all expired", tr.done.Len(), tr.doneBytes)
	}
}
