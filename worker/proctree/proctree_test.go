package proctree

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestParentOfAChildIsUs(t *testing.T) {
	c := exec.Command("sleep", "30")
	if err := c.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	p, ok := Parent(c.Process.Pid)
	if !ok || p != os.Getpid() {
		t.Fatalf("Parent(child) = %d, %v; want %d", p, ok, os.Getpid())
	}
	if a := Ancestors(c.Process.Pid, Parent); len(a) == 0 || a[0] != os.Getpid() || !slices.Contains(a, os.Getppid()) {
		t.Fatalf("Ancestors(child) = %v; want us (%d) then our parent (%d)", a, os.Getpid(), os.Getppid())
	}
}

func TestGrandchildrenAreInTheTree(t *testing.T) {
	// sh starts sleep and waits: sleep's ancestors are sh, then us.
	c := exec.Command("sh", "-c", "sleep 30 & echo $!; wait")
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Skip("no sh:", err)
	}
	defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	var grandchild int
	if _, err := fmt.Fscan(out, &grandchild); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = (&os.Process{Pid: grandchild}).Signal(os.Kill) }()
	a := Ancestors(grandchild, Parent)
	if len(a) < 2 || a[0] != c.Process.Pid || a[1] != os.Getpid() {
		t.Fatalf("Ancestors(grandchild) = %v; want [%d %d ...]", a, c.Process.Pid, os.Getpid())
	}
}

func TestUnknownProcesses(t *testing.T) {
	for _, pid := range []int{0, -1, 1 << 30} {
		if p, ok := Parent(pid); ok {
			t.Errorf("Parent(%d) = %d, true; want not found", pid, p)
		}
	}
	if a := Ancestors(1<<30, Parent); a != nil {
		t.Errorf("Ancestors(missing) = %v", a)
	}
	// A parent function that loops stops at the depth bound.
	loop := func(pid int) (int, bool) { return pid%3 + 1, true }
	if a := Ancestors(5, loop); len(a) != maxDepth {
		t.Errorf("a looping tree walked %d steps; want %d", len(a), maxDepth)
	}
}
