// Package proctree reads the process tree from /proc: which process
// started which. NVML reports GPU memory per process, while a model server
// often does its GPU work in a child (vLLM's engine core, a worker pool);
// the memory of a reservation's process is the memory of its tree.
package proctree

import (
	"bytes"
	"os"
	"strconv"
)

// maxDepth bounds a walk up the tree (a loop is impossible in /proc, but a
// pid reused mid-walk is not).
const maxDepth = 64

// Parent returns the parent of process pid; ok is false when pid is not
// running or not visible (another pid namespace, no /proc).
func Parent(pid int) (parent int, ok bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses,
	// so the fields start after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(string(f[1]))
	if err != nil || p < 0 {
		return 0, false
	}
	return p, true
}

// Ancestors lists pid's parent, its parent's parent, and so on up to (not
// including) pid 0, as parent reports them; nil when parent knows none.
func Ancestors(pid int, parent func(int) (int, bool)) []int {
	var out []int
	for range maxDepth {
		p, ok := parent(pid)
		if !ok || p <= 0 || p == pid {
			break
		}
		out = append(out, p)
		pid = p
	}
	return out
}
