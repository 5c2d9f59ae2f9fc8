package ledger

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/memworker/memworker/subjects"
)

// The decisions a device makes behind its lock, as pure functions.

func TestLeastRecentlyUsedPicksTheOldestModelFirst(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   []candidate
		want []string
	}{
		{"empty", nil, nil},
		{"oldest first", []candidate{{id: "new", lastUsed: t0.Add(time.Hour)}, {id: "old", lastUsed: t0}, {id: "mid", lastUsed: t0.Add(time.Minute)}}, []string{"old", "mid", "new"}},
		{"ties by model id", []candidate{{id: "b", lastUsed: t0}, {id: "a", lastUsed: t0}, {id: "c", lastUsed: t0.Add(-time.Second)}}, []string{"c", "a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leastRecentlyUsed(tt.in)
			var got []string
			for _, c := range tt.in {
				got = append(got, c.id)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRankPutsCostBeforeSavings(t *testing.T) {
	rec := func(typ, sev string, savings int64) subjects.Recommendation {
		return subjects.Recommendation{Type: typ, Severity: sev, EstimatedSavingsBytes: savings}
	}
	tests := []struct {
		name string
		in   []subjects.Recommendation
		want []string
	}{
		{"no copy before a copy before an offload, whatever the severity or savings", []subjects.Recommendation{
			rec("offload_models", subjects.SeverityCritical, 900), rec("defragment", subjects.SeverityWarning, 500), rec("release_cached", subjects.SeverityInfo, 1),
		}, []string{"release_cached", "defragment", "offload_models"}},
		{"same cost by savings", []subjects.Recommendation{
			rec("release_cached", subjects.SeverityInfo, 1), rec("free_expired", subjects.SeverityInfo, 100),
			rec("offload_idle", subjects.SeverityInfo, 5), rec("offload_models", subjects.SeverityWarning, 50),
		}, []string{"free_expired", "release_cached", "offload_models", "offload_idle"}},
		{"equal stays in order", []subjects.Recommendation{rec("free_expired", subjects.SeverityInfo, 5), rec("release_cached", subjects.SeverityInfo, 5)}, []string{"free_expired", "release_cached"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rank(tt.in)
			var got []string
			for _, r := range tt.in {
				got = append(got, r.Type)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}
