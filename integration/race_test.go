//go:build race

package integration

// raceEnabled: the race detector makes CPU-bound work several times
// slower; tests that promise a figure for a burst scale it.
const raceEnabled = true
