package contract_test

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/memworker/memworker/contract"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestDocumentIsUpToDate: docs/asyncapi.yaml is what the Go types make.
func TestDocumentIsUpToDate(t *testing.T) {
	t.Chdir("..")
	want, err := contract.Document(worker.Version)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(contract.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with the Go types of subjects and events: run go generate ./contract", contract.Path)
	}
}

// TestAccountsConfigIsUpToDate: docs/accounts.conf is what the contract
// generates, and it exports and imports every operation (renew included)
// and, to each tenant, only its own allocation events.
func TestAccountsConfigIsUpToDate(t *testing.T) {
	t.Chdir("..")
	want := contract.Accounts(contract.SampleTenants)
	got, err := os.ReadFile(contract.AccountsPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with the contract: run go generate ./contract", contract.AccountsPath)
	}
	for _, op := range subjects.Ops() {
		sub := subjects.Request(op, "*")
		if n := strings.Count(string(got), `"`+sub+`"`); n != 1+len(contract.SampleTenants) {
			t.Errorf("%s appears %d times, want an export and an import per tenant", sub, n)
		}
	}
	for _, tn := range contract.SampleTenants {
		if !strings.Contains(string(got), `{ stream: "`+subjects.TenantAllocationEvents(tn.Account)+`", accounts: [`+tn.Account+`] }`) {
			t.Errorf("%s's allocation events are not exported to it alone", tn.Account)
		}
	}
	if strings.Contains(string(got), `"memory.allocation.>"`) {
		t.Error("every tenant's allocation events are exported")
	}
}

// TestDocumentIsAsyncAPI: the document is valid against the official
// AsyncAPI 3.0.0 JSON Schema.
func TestDocumentIsAsyncAPI(t *testing.T) {
	f, err := os.Open("testdata/asyncapi-3.0.0.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spec, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("http://asyncapi.com/definitions/3.0.0/asyncapi.json", spec); err != nil {
		t.Fatal(err)
	}
	schema, err := c.Compile("http://asyncapi.com/definitions/3.0.0/asyncapi.json")
	if err != nil {
		t.Fatal(err)
	}
	doc := readDoc(t)
	if err := schema.Validate(doc); err != nil {
		t.Fatalf("%s is not AsyncAPI 3.0.0: %v", contract.Path, err)
	}
	// And the check can fail: an operation with an action AsyncAPI 3 has
	// not.
	bad := readDoc(t)
	bad.(map[string]any)["operations"].(map[string]any)["allocate"].(map[string]any)["action"] = "publish"
	if err := schema.Validate(bad); err == nil {
		t.Error("a document with action publish passed as AsyncAPI 3.0.0")
	}
}

func readDoc(t *testing.T) any {
	t.Helper()
	raw, err := os.ReadFile("../" + contract.Path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestEveryOpAndEventHasItsChannel: the 16 ops, their fleet channels and
// the three event channels, each with its operation and the queue group.
func TestEveryOpAndEventHasItsChannel(t *testing.T) {
	doc := readDoc(t).(map[string]any)
	channels := doc["channels"].(map[string]any)
	operations := doc["operations"].(map[string]any)
	queue := func(op string) string {
		return operations[op].(map[string]any)["bindings"].(map[string]any)["nats"].(map[string]any)["queue"].(string)
	}
	for _, op := range subjects.Ops() {
		id := string(op)
		ch, ok := channels[id].(map[string]any)
		if !ok || ch["address"] != subjects.Request(op, "{device_id}") || queue(id) != subjects.QueueGroup("{device_id}") {
			t.Errorf("%s: channel %v, operation queue %q", op, ch, queue(id))
		}
		if got := operations[id].(map[string]any)["action"]; got != "receive" {
			t.Errorf("%s: action %v", op, got)
		}
		fleet, ok := channels[id+"Fleet"].(map[string]any)
		if op.Fleet() != ok || (ok && (fleet["address"] != subjects.FleetRequest(op) || queue(id+"Fleet") != subjects.NodeQueueGroup("{node}"))) {
			t.Errorf("%s: fleet channel %v", op, fleet)
		}
	}
	for id, address := range map[string]string{
		"pressureEvents":   subjects.PressureEvents("{device_id}"),
		"allocationEvents": strings.TrimSuffix(subjects.AllocationEvents("{device_id}", ""), subjects.OperatorToken) + "{tenant}",
		"lifecycleEvents":  subjects.LifecycleEvents("{node}"),
	} {
		if ch, ok := channels[id].(map[string]any); !ok || ch["address"] != address {
			t.Errorf("%s: %v, want address %s", id, channels[id], address)
		}
	}
}

// TestTheAsyncAPIParserAcceptsIt runs the AsyncAPI project's own parser
// (@asyncapi/parser, from npm) when node is here: scripts/asyncapi-check.sh.
func TestTheAsyncAPIParserAcceptsIt(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("no node here")
	}
	if testing.Short() {
		t.Skip("installs @asyncapi/parser from npm")
	}
	out, err := exec.Command("../scripts/asyncapi-check.sh").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "parsed:") {
		t.Fatalf("the AsyncAPI parser: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

// TestCSharpRecordsAreGenerated runs the README's way to typed C# records
// (quicktype from npm, scripts/csharp-records.sh) when node is here, and
// checks the classes and their snake_case JSON names are produced.
func TestCSharpRecordsAreGenerated(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("no node here")
	}
	if testing.Short() {
		t.Skip("installs quicktype from npm")
	}
	out := t.TempDir() + "/Memworker.cs"
	if b, err := exec.Command("../scripts/csharp-records.sh", out).CombinedOutput(); err != nil {
		t.Fatalf("scripts/csharp-records.sh: %v\n%s", err, b)
	}
	cs, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"namespace Memworker",
		"public partial class AllocateRequestEnvelope",
		"public partial class AllocateRequest\n",
		"public partial class AllocateReplyEnvelope",
		"public partial class ErrorReply",
		"public partial class PressureEvent",
		`[JsonPropertyName("size_bytes")]`,
		"public enum ErrorCode",
	} {
		if !strings.Contains(string(cs), want) {
			t.Errorf("the generated C# lacks %q", want)
		}
	}
}

// TestReadmeCSharpUsesTheContractsNames: the message classes the C#
// examples of README.md and docs/guide.md use are schemas of the document, which
// scripts/csharp-records.sh turns into classes of those names.
func TestReadmeCSharpUsesTheContractsNames(t *testing.T) {
	var readme []byte
	for _, path := range []string{"../README.md", "../docs/guide.md"} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		readme = append(readme, b...)
	}
	schemas := readDoc(t).(map[string]any)["components"].(map[string]any)["schemas"].(map[string]any)
	blocks := regexp.MustCompile("(?s)```csharp\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 4 {
		t.Fatalf("the README has %d C# examples", len(blocks))
	}
	names := regexp.MustCompile(`\b[A-Z][A-Za-z]*(RequestEnvelope|ReplyEnvelope|FleetReply|Request|Event|ErrorReply)\b`)
	seen := 0
	for _, b := range blocks {
		for _, name := range names.FindAllString(b[1], -1) {
			if _, ok := schemas[name]; !ok {
				t.Errorf("the README's C# uses %s, which the contract has no schema for", name)
			}
			seen++
		}
	}
	if seen < 8 {
		t.Errorf("only %d contract names in the README's C#", seen)
	}
}
