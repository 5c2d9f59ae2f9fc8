package main

import (
	"go/version"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/mod/modfile"
)

// stage is one FROM of the Dockerfile as far as these checks need it.
type stage struct {
	name, image string
	workdir     string
	makes       []string // paths the stage writes or its base image ships
	line        int
}

// baseImageShips lists what official base images used here carry, by
// image name: the golang image keeps Go in /usr/local/go and GOPATH at /go
// (so modules land in /go/pkg/mod), not under /root.
var baseImageShips = map[string][]string{
	"golang": {"/usr/local/go", "/go"},
}

// TestDockerfileStagesBuild parses the Dockerfile with buildkit's own parser
// (no Docker engine runs in CI) and checks what would break a build: the Go
// image must carry at least the Go version go.mod asks for (it sets
// GOTOOLCHAIN=local, so an older one refuses to build), and every
// COPY --from path must be one the named stage makes.
func TestDockerfileStagesBuild(t *testing.T) {
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parsing Dockerfile: %v", err)
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := modfile.ParseLax("go.mod", gomod, nil)
	if err != nil || mod.Go == nil {
		t.Fatalf("go.mod has no go line: %v", err)
	}
	wantGo := "go" + mod.Go.Version

	stages := map[string]*stage{}
	var cur *stage
	var names []string
	for _, n := range res.AST.Children {
		args := nodeArgs(n)
		switch strings.ToLower(n.Value) {
		case "from":
			cur = &stage{image: args[0], line: n.StartLine}
			if len(args) == 3 && strings.EqualFold(args[1], "as") {
				cur.name = args[2]
			}
			name, tag, _ := strings.Cut(cur.image, ":")
			cur.makes = append(cur.makes, baseImageShips[name]...)
			if name == "golang" {
				got := "go" + strings.SplitN(tag, "-", 2)[0]
				if !version.IsValid(got) || version.Compare(got, wantGo) < 0 {
					t.Errorf("line %d: %s carries Go %q, older than go.mod's %s (the image sets GOTOOLCHAIN=local)", n.StartLine, cur.image, tag, mod.Go.Version)
				}
			}
			if cur.name != "" {
				stages[cur.name] = cur
				names = append(names, cur.name)
			}
		case "workdir":
			cur.workdir = cur.abs(args[0])
			cur.makes = append(cur.makes, cur.workdir)
		case "copy", "add":
			if len(args) > 0 {
				cur.makes = append(cur.makes, cur.abs(args[len(args)-1]))
			}
			from := flagValue(n.Flags, "--from")
			if from == "" {
				continue
			}
			src, ok := stages[from]
			if !ok {
				continue // an image, not a stage
			}
			for _, p := range args[:len(args)-1] {
				if !madeBy(src, p) {
					t.Errorf("line %d: COPY --from=%s %s: stage %s (line %d) makes only %v", n.StartLine, from, p, from, src.line, src.makes)
				}
			}
		case "run":
			for _, p := range runOutputs(strings.Join(args, " ")) {
				cur.makes = append(cur.makes, cur.abs(p))
			}
		}
	}
	if len(names) == 0 || names[len(names)-1] != "sim" {
		t.Errorf("stages %v: the last (default) target should be sim", names)
	}
	if _, ok := stages["cuda"]; !ok {
		t.Errorf("stages %v: no cuda target (docker-compose's gpu profile builds it)", names)
	}
}

// abs resolves p against the stage's WORKDIR, as Docker does.
func (s *stage) abs(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join("/", s.workdir, p)
}

func nodeArgs(n *parser.Node) []string {
	var out []string
	for a := n.Next; a != nil; a = a.Next {
		out = append(out, a.Value)
	}
	return out
}

func flagValue(flags []string, name string) string {
	for _, f := range flags {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return ""
}

// runOutputs finds the files a RUN line writes that later stages copy:
// `go build -o PATH` and `mkdir -p PATH`.
func runOutputs(cmd string) []string {
	var out []string
	fields := strings.Fields(cmd)
	for i, f := range fields {
		if (f == "-o" || f == "-p") && i+1 < len(fields) {
			out = append(out, fields[i+1])
		}
	}
	return out
}

func madeBy(s *stage, p string) bool {
	p = s.abs(p)
	for _, m := range s.makes {
		if p == m || strings.HasPrefix(p, m+"/") {
			return true
		}
	}
	return false
}
