package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
)

// TestReadmeTourRuns runs the commands of README's five-minute tour, as
// written, against a worker like the README's (two 16 GiB sim devices), so
// README cannot drift from memctl. Placeholders are filled in (ID... with
// the ids the tour allocated, DEVICE with a device); the wait is granted
// when the 2 GiB allocation is freed, as the tour says; watch runs until
// a Ctrl-C. The `go run` and `go test` lines are the CI's own commands.
func TestReadmeTourRuns(t *testing.T) {
	lines := readmeBlock(t, "## A five-minute tour")
	f := newFixtureSized(t, 2, 16*GiB)
	idRe := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	var ids []string
	ran := 0
	for _, line := range lines {
		args := strings.Fields(line)
		if len(args) == 0 || args[0] != "memctl" {
			continue
		}
		args = args[1:]
		ran++
		for i, a := range args {
			if a == "DEVICE" {
				args[i] = "n1-gpu0"
			}
		}
		switch {
		case args[0] == "watch":
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond) // Ctrl-C
			code, out, errs := f.memctlCtx(ctx, args...)
			cancel()
			if code != exitOK || !strings.Contains(out, "watching") {
				t.Errorf("%s: exit %d\n%s%s", line, code, out, errs)
			}
		case args[0] == "free" && len(args) == 2 && args[1] == "ID...":
			f.ok(append([]string{"free"}, ids...)...)
		case slices.Contains(args, "--wait"):
			// It waits; freeing the 2 GiB allocation makes room.
			done := make(chan string, 1)
			go func() {
				code, out, errs := f.memctl(args...)
				if code != exitOK {
					out = "FAILED: " + out + errs
				}
				done <- out
			}()
			select {
			case out := <-done:
				t.Fatalf("%s did not wait: %s", line, out)
			case <-time.After(300 * time.Millisecond):
			}
			f.ok("free", ids[0])
			out := <-done
			if !strings.Contains(out, "15 GiB on") {
				t.Errorf("%s: %q", line, out)
			}
			ids = append(ids[1:], idRe.FindString(out))
		default:
			out := f.ok(args...)
			if args[0] == "alloc" {
				ids = append(ids, idRe.FindString(out))
			}
		}
	}
	if ran < 6 {
		t.Fatalf("ran %d memctl commands of the tour: has README changed shape?", ran)
	}
	if out := f.ok("allocations"); idRe.MatchString(out) {
		t.Errorf("the tour's last line should leave nothing allocated:\n%s", out)
	}
}

// TestReadmeNatsCommandsRun sends README's nats CLI requests, as written
// (the CI has no nats CLI: the test is its stand-in, through nats.go), to a
// worker like the README's, and checks each is answered with success;
// `nats micro info memory` asks micro's INFO of the service.
func TestReadmeNatsCommandsRun(t *testing.T) {
	lines := readmeBlock(t, "## From C# and the nats CLI")
	f := newFixtureSized(t, 2, 16*GiB)
	nc, err := nats.Connect(f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Join continued lines.
	var cmds []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		for strings.HasSuffix(l, "\\") && i+1 < len(lines) {
			i++
			l = strings.TrimSuffix(l, "\\") + " " + lines[i]
		}
		cmds = append(cmds, strings.ReplaceAll(l, "$(hostname -s)", "n1"))
	}
	ran := 0
	reqRe := regexp.MustCompile(`^nats req (?:--timeout \S+ )?(\S+)\s+'(.*)'$`)
	for _, c := range cmds {
		switch {
		case c == "nats micro info memory":
			if _, err := nc.Request("$SRV.INFO.memory", nil, 3*time.Second); err != nil {
				t.Errorf("%s: %v", c, err)
			}
			ran++
		case strings.HasPrefix(c, "nats req"):
			m := reqRe.FindStringSubmatch(c)
			if m == nil {
				t.Errorf("cannot read %q", c)
				continue
			}
			msg, err := nc.Request(m[1], []byte(m[2]), 10*time.Second)
			if err != nil {
				t.Errorf("%s: %v", c, err)
				continue
			}
			if r, err := subjects.DecodeReply(msg.Data, nil); err != nil || !r.Success {
				t.Errorf("%s: %s", c, msg.Data)
			}
			ran++
		}
	}
	if ran < 4 {
		t.Fatalf("ran %d nats commands of README: has it changed shape?", ran)
	}
}

// readmeBlock returns the lines of the first sh block after heading, each
// without its comment.
func readmeBlock(t *testing.T, heading string) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(b, []byte("\n"+heading+"\n"))
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	_, rest, ok = bytes.Cut(rest, []byte("```sh\n"))
	block, _, ok2 := bytes.Cut(rest, []byte("```"))
	if !ok || !ok2 {
		t.Fatalf("no sh block after %q", heading)
	}
	var out []string
	for _, l := range strings.Split(string(block), "\n") {
		if i := strings.Index(l, " #"); i >= 0 {
			l = l[:i]
		}
		out = append(out, strings.TrimSpace(l))
	}
	return out
}

// memctlCtx runs memctl until ctx ends, as a user's Ctrl-C.
func (f *fixture) memctlCtx(ctx context.Context, args ...string) (int, string, string) {
	f.t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, append([]string{"--server", f.url, "--timeout", "3s", "--cache-dir", f.cache}, args...), streams{out: &out, err: &errb})
	return code, out.String(), errb.String()
}
