// Package contract is memworker's wire contract as a machine-readable
// document: AsyncAPI 3.0.0, with every payload as JSON Schema (draft-07,
// AsyncAPI's default schema format), generated from the Go types of
// packages subjects and events. docs/asyncapi.yaml is its output
// (go generate ./contract); a test fails when the file is out of date, and
// the integration suite validates every reply and event it sees against it.
package contract

//go:generate go run ./gen -root .. -out docs/asyncapi.yaml

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/invopop/jsonschema"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

// Module is the Go module the types live in.
const Module = "github.com/memworker/memworker"

// Path is where the document lives in the repository.
const Path = subjects.ContractPath

// RequestName and ReplyName are the message names of op's request and
// success reply; their payloads are the schemas op.RequestSchema() and
// op.ReplySchema() (the Go payload types keep their own names: data of
// allocate's request is AllocateRequest, of its reply Allocation).
func RequestName(op subjects.Op) string { return pascal(string(op)) + "Request" }

// ReplyName is the message name of op's success reply.
func ReplyName(op subjects.Op) string { return pascal(string(op)) + "Reply" }

// FleetReplyName is the message name of op's fleet reply, and the schema
// name of its data.
func FleetReplyName(op subjects.Op) string { return pascal(string(op)) + "FleetReply" }

// The shared schema names.
const (
	ErrorReply = "ErrorReply"
	ErrorCode  = "ErrorCode"
)

// EventTypes are the CloudEvent types by event channel kind, and the Go
// type of their data.
var eventTypes = []struct {
	channel, address string
	params           []string
	types            []string
	data             any
}{
	{"pressure", "memory.pressure.{device_id}", []string{"device_id"}, []string{events.TypePressure}, events.Pressure{}},
	{"allocation", "memory.allocation.{device_id}.{tenant}", []string{"device_id", "tenant"}, []string{events.TypeAllocationExpired, events.TypeReservationExceeded,
		events.TypeReclaimRequested, events.TypeReclaimCompleted, events.TypeReclaimFailed, events.TypeReclaimRestored}, events.Allocation{}},
	{"lifecycle", "memory.lifecycle.{node}", []string{"node"}, []string{events.TypeWorkerStarted, events.TypeWorkerStopped}, events.Lifecycle{}},
}

// EventName is the message and schema name of a CloudEvent type:
// io.memworker.allocation.expired.v1 -> AllocationExpiredEvent.
func EventName(ceType string) string {
	t := strings.TrimSuffix(strings.TrimPrefix(ceType, "io.memworker."), ".v1")
	t = strings.TrimPrefix(t, "memory.")
	return pascal(strings.ReplaceAll(t, ".", "_")) + "Event"
}

// EventDataSchema is the schema name of the data of CloudEvent type
// ceType: the body of an event in binary mode ("" for an unknown type).
func EventDataSchema(ceType string) string {
	for _, ev := range eventTypes {
		if slices.Contains(ev.types, ceType) {
			return namer(reflect.TypeOf(ev.data))
		}
	}
	return ""
}

// cloudEvent is a CloudEvent in structured mode (the JSON the worker
// publishes by default), data aside.
type cloudEvent struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
}

// Document builds the AsyncAPI document. It reads the doc comments of the
// Go types from the source, so it runs in the module's root folder.
func Document(version string) ([]byte, error) {
	g := &gen{schemas: obj{}}
	g.r = &jsonschema.Reflector{Anonymous: true, Mapper: mapper, Namer: namer}
	for _, dir := range []string{"subjects", "events"} {
		if err := g.r.AddGoComments(Module, dir); err != nil {
			return nil, fmt.Errorf("reading the doc comments of %s (run in the module's root): %w", dir, err)
		}
	}
	channels, operations, messages := obj{}, obj{}, obj{}
	errRef := g.errorReply()
	messages.set(ErrorReply, message(ErrorReply, "A failed request: success false, the error code and message; micro's Nats-Service-Error and Nats-Service-Error-Code headers carry them too.", errRef, errorHeaders()))
	for _, op := range subjects.Ops() {
		req, reply := op.Payloads()
		reqRef, replyRef := g.envelope(op, req, reply)
		name := string(op)
		messages.set(RequestName(op), message(RequestName(op), "The "+name+" request envelope.", reqRef, nil))
		messages.set(ReplyName(op), message(ReplyName(op), "The "+name+" success reply envelope.", replyRef, nil))
		g.channel(&channels, &operations, name, "memory."+name+".{device_id}", "device_id", RequestName(op), ReplyName(op),
			"memory-{device_id}", fmt.Sprintf("%s on one device. Served in the device's queue group.", name))
		if op.Fleet() {
			fleetRef := g.fleetReply(op)
			messages.set(FleetReplyName(op), message(FleetReplyName(op), "One node's answer to a fleet "+name+": the reply of each of its devices.", fleetRef, nil))
			g.channel(&channels, &operations, name+"Fleet", "memory."+name+"."+subjects.Fleet, "", RequestName(op), FleetReplyName(op),
				"memory-node-{node}", fmt.Sprintf("%s on every device of every node: each node answers once (request-many; wait for the nodes you expect, or a quiet interval).", name))
		}
	}
	for _, ev := range eventTypes {
		chMsgs := obj{}
		var opMsgs []any
		for _, t := range ev.types {
			n := EventName(t)
			messages.set(n, message(n, "CloudEvent "+t+" (structured mode; with --events-binary the data alone, the attributes in ce- headers).", g.event(n, t, ev.data), nil))
			chMsgs.set(n, ref("#/components/messages/"+n))
			opMsgs = append(opMsgs, ref("#/channels/"+ev.channel+"Events/messages/"+n))
		}
		params := obj{}
		for _, p := range ev.params {
			params.set(p, obj{{"description", paramDoc(p)}})
		}
		channels.set(ev.channel+"Events", obj{
			{"address", ev.address},
			{"title", ev.channel + " events"},
			{"parameters", params},
			{"messages", chMsgs},
		})
		operations.set("publish"+pascal(ev.channel)+"Events", obj{
			{"action", "send"},
			{"channel", ref("#/channels/" + ev.channel + "Events")},
			{"summary", "The worker publishes " + ev.channel + " events (JetStream keeps pressure and allocation events in the MEMORY_PRESSURE stream)."},
			{"description", eventDelivery},
			{"messages", opMsgs},
		})
	}
	codes := obj{}
	for _, c := range subjects.Codes() {
		codes.set(string(c), c.Status())
	}
	doc := obj{
		{"asyncapi", "3.0.0"},
		{"info", obj{
			{"title", "memworker"},
			{"version", version},
			{"description", description},
			{"license", obj{{"name", "See the repository"}}},
			{"x-error-status-codes", codes},
		}},
		{"defaultContentType", "application/json"},
		{"channels", channels},
		{"operations", operations},
		{"components", obj{{"schemas", g.schemas}, {"messages", messages}}},
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	out, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, err
	}
	return append([]byte(header), out...), nil
}

const header = "# Generated by go generate ./contract from the Go types of packages\n# subjects and events: do not edit.\n"

// eventDelivery is how events arrive (events/resend.go).
const eventDelivery = "At least once: an event the stream did not acknowledge is sent again with the same CloudEvent id (a few times, within the stream's two-minute duplicate window, which keeps it once), so a subscriber deduplicates by id; an event sent again may arrive after newer ones, whose order its time tells."

const description = "GPU memory operations over NATS request-reply, one worker per GPU host. " +
	"Requests go to memory.<op>.<device_id> (queue group memory-<device_id>) or, for the fleet reads, memory.<op>.all " +
	"(queue group memory-node-<node>). A request is the envelope {request_id, action, data}; a reply is " +
	"{success, request_id, timestamp, data} or, on failure, {success: false, error_code, error_message}. " +
	"Keys are snake_case; requests may spell them in PascalCase or camelCase too (SizeBytes, sizeBytes). " +
	"Error codes and the numeric codes of the Nats-Service-Error-Code header are in x-error-status-codes. " +
	"The worker publishes CloudEvents on memory.pressure.<device_id>, memory.allocation.<device_id>.<tenant> and memory.lifecycle.<node>."

func paramDoc(p string) string {
	switch p {
	case "node":
		return "The node (host) name."
	case "tenant":
		return "The tenant (NATS account) whose allocation it is; " + subjects.OperatorToken + " for the operator's own. A tenant's account imports memory.allocation.*.<its account> only."
	}
	return "The device id, <node>-gpu<index>."
}

// gen collects component schemas as it reflects types.
type gen struct {
	r       *jsonschema.Reflector
	schemas obj
}

// reflect adds the schema of v and the types it uses to the components
// and returns a reference to it.
func (g *gen) reflect(v any) any {
	s := g.r.Reflect(v)
	name := namer(reflect.TypeOf(v))
	if s.Ref != "" {
		name = strings.TrimPrefix(s.Ref, "#/$defs/")
	}
	for _, n := range slices.Sorted(maps.Keys(s.Definitions)) {
		g.add(n, s.Definitions[n])
	}
	return ref("#/components/schemas/" + name)
}

// add puts a schema in the components, with its references rewritten.
func (g *gen) add(name string, s *jsonschema.Schema) {
	if g.schemas.has(name) {
		return
	}
	if s.Title == "" {
		s.Title = name // code generators (quicktype) name their classes by it
	}
	js, err := json.Marshal(s)
	if err != nil {
		panic(err) // schemas of Go types always marshal
	}
	js = []byte(strings.ReplaceAll(string(js), `"#/$defs/`, `"#/components/schemas/`))
	g.schemas.set(name, json.RawMessage(js))
}

// addObj puts a schema built here in the components.
func (g *gen) addObj(name string, s obj) any {
	g.schemas.set(name, append(obj{{"title", name}}, s...))
	return ref("#/components/schemas/" + name)
}

// envelope adds op's request envelope and success reply envelope.
func (g *gen) envelope(op subjects.Op, req, reply any) (reqRef, replyRef any) {
	reqData, replyData := g.reflect(req), g.reflect(reply)
	reqRef = g.addObj(op.RequestSchema(), obj{
		{"type", "object"},
		{"description", "The " + string(op) + " request envelope. request_id (at most 256 printable bytes) makes a mutating request idempotent: a retry gets the first reply. action, when present, must be " + op.Action() + ". Keys are snake_case as here; the worker also accepts them in PascalCase or camelCase (RequestId, requestId), each key once."},
		{"properties", obj{
			{"request_id", obj{{"type", "string"}, {"maxLength", subjects.MaxRequestIDLen}}},
			{"action", obj{{"type", "string"}, {"enum", []string{op.Action(), string(op)}}}},
			{"data", reqData},
		}},
	})
	replyRef = g.addObj(op.ReplySchema(), g.replyEnvelope("The "+string(op)+" success reply.", replyData))
	return reqRef, replyRef
}

// replyEnvelope is the success reply with data.
func (g *gen) replyEnvelope(doc string, data any) obj {
	tenant := g.reflect(subjects.TenantUsage{})
	return obj{
		{"type", "object"},
		{"description", doc},
		{"required", []string{"success", "request_id", "timestamp", "data"}},
		{"additionalProperties", false},
		{"properties", obj{
			{"success", obj{{"const", true}}},
			{"request_id", obj{{"type", "string"}}},
			{"timestamp", obj{{"type", "string"}, {"format", "date-time"}}},
			{"data", data},
			{"tenant_usage", tenant},
		}},
	}
}

func (g *gen) errorReply() any {
	var codes []string
	for _, c := range subjects.Codes() {
		codes = append(codes, string(c))
	}
	var doc []string
	for _, c := range subjects.Codes() {
		doc = append(doc, fmt.Sprintf("%s (%d)", c, c.Status()))
	}
	code := g.addObj(ErrorCode, obj{
		{"type", "string"},
		{"description", "A stable error code; in parentheses the Nats-Service-Error-Code header's number: " + strings.Join(doc, ", ") + "."},
		{"enum", codes},
	})
	return g.addObj(ErrorReply, obj{
		{"type", "object"},
		{"description", "A failed request. error_message quotes at most 64 bytes of input and is at most 512 bytes."},
		{"required", []string{"success", "request_id", "timestamp", "error_code", "error_message"}},
		{"additionalProperties", false},
		{"properties", obj{
			{"success", obj{{"const", false}}},
			{"request_id", obj{{"type", "string"}}},
			{"timestamp", obj{{"type", "string"}, {"format", "date-time"}}},
			{"error_code", code},
			{"error_message", obj{{"type", "string"}, {"maxLength", subjects.MaxErrorMessage}}},
			{"data", obj{
				{"type", "object"},
				{"description", "With OVERLOADED: when to try again."},
				{"additionalProperties", false},
				{"properties", obj{{"retry_after_ms", obj{{"type", "integer"}, {"minimum", 0}}}}},
			}},
		}},
	})
}

// fleetReply adds op's fleet reply: a success envelope whose data is
// subjects.FleetReply with each device's data as op's reply.
func (g *gen) fleetReply(op subjects.Op) any {
	_, reply := op.Payloads()
	data := g.reflect(reply)
	code := ref("#/components/schemas/" + ErrorCode)
	device := obj{
		{"title", pascal(string(op)) + "FleetDevice"},
		{"type", "object"},
		{"required", []string{"device_id", "success"}},
		{"additionalProperties", false},
		{"properties", obj{
			{"device_id", obj{{"type", "string"}}},
			{"success", obj{{"type", "boolean"}}},
			{"data", data},
			{"error_code", code},
			{"error_message", obj{{"type", "string"}}},
		}},
	}
	fleet := g.addObj(FleetReplyName(op), obj{
		{"type", "object"},
		{"description", "One node's answer to a fleet " + string(op) + " (subjects.FleetReply)."},
		{"required", []string{"node", "instance", "devices"}},
		{"additionalProperties", false},
		{"properties", obj{
			{"node", obj{{"type", "string"}}},
			{"instance", obj{{"type", "string"}}},
			{"devices", obj{{"type", "array"}, {"items", device}}},
		}},
	})
	return g.addObj(op.FleetReplySchema(), g.replyEnvelope("One node's answer to a fleet "+string(op)+".", fleet))
}

// event adds the structured CloudEvent of type t with data.
func (g *gen) event(name, t string, data any) any {
	base := g.r.Reflect(cloudEvent{})
	var props obj
	for p := base.Definitions["cloudEvent"].Properties.Oldest(); p != nil; p = p.Next() {
		props.set(p.Key, p.Value)
	}
	props = props.with("type", obj{{"const", t}})
	props = props.with("specversion", obj{{"const", "1.0"}})
	props = props.with("datacontenttype", obj{{"const", events.ContentTypeJSON}})
	props.set("data", g.reflect(data))
	return g.addObj(name, obj{
		{"type", "object"},
		{"description", "CloudEvent " + t + " in structured mode."},
		{"required", []string{"specversion", "id", "source", "type", "time", "datacontenttype", "data"}},
		{"properties", props},
	})
}

// channel adds a request channel, its reply channel and the operation.
func (g *gen) channel(channels, operations *obj, id, address, param, req, reply, queue, summary string) {
	ch := obj{{"address", address}}
	if param != "" {
		ch = append(ch, kv{"parameters", obj{{param, obj{{"description", paramDoc(param)}}}}})
	}
	ch = append(ch, kv{"messages", obj{{req, ref("#/components/messages/" + req)}}})
	channels.set(id, ch)
	channels.set(id+"Reply", obj{
		{"address", nil},
		{"description", "The request's reply subject (an inbox)."},
		{"messages", obj{{reply, ref("#/components/messages/" + reply)}, {ErrorReply, ref("#/components/messages/" + ErrorReply)}}},
	})
	operations.set(id, obj{
		{"action", "receive"},
		{"channel", ref("#/channels/" + id)},
		{"summary", summary},
		{"messages", []any{ref("#/channels/" + id + "/messages/" + req)}},
		{"reply", obj{
			{"address", obj{{"location", "$message.header#/replyTo"}, {"description", "The NATS reply subject of the request."}}},
			{"channel", ref("#/channels/" + id + "Reply")},
			{"messages", []any{ref("#/channels/" + id + "Reply/messages/" + reply), ref("#/channels/" + id + "Reply/messages/" + ErrorReply)}},
		}},
		{"bindings", obj{{"nats", obj{{"queue", queue}, {"bindingVersion", "0.1.0"}}}}},
	})
}

func message(name, doc string, payload, headers any) obj {
	m := obj{{"name", name}, {"contentType", "application/json"}, {"summary", doc}}
	if headers != nil {
		m = append(m, kv{"headers", headers})
	}
	return append(m, kv{"payload", payload})
}

func errorHeaders() obj {
	var statuses []int
	seen := map[int]bool{}
	for _, c := range subjects.Codes() {
		if s := c.Status(); !seen[s] {
			seen[s] = true
			statuses = append(statuses, s)
		}
	}
	return obj{
		{"type", "object"},
		{"properties", obj{
			{"Nats-Service-Error", obj{{"type", "string"}, {"description", "The error message."}}},
			{"Nats-Service-Error-Code", obj{{"type", "string"}, {"description", "The error code's number (x-error-status-codes)."}, {"enum", itoas(statuses)}}},
		}},
	}
}

// strs is a list of string-typed values as strings.
func strs[T ~string](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = string(v)
	}
	return out
}

// mapper gives the contract's enums their values.
func mapper(t reflect.Type) *jsonschema.Schema {
	enum := func(doc string, vals ...string) *jsonschema.Schema {
		s := &jsonschema.Schema{Type: "string", Description: doc}
		for _, v := range vals {
			s.Enum = append(s.Enum, v)
		}
		return s
	}
	switch t {
	case reflect.TypeOf(subjects.AllocationType("")):
		return enum("Where an allocation lives (any letter case is accepted in requests).", strs(subjects.AllocationTypes())...)
	case reflect.TypeOf(subjects.Level("")):
		return enum("A pressure level.", strs(subjects.Levels())...)
	case reflect.TypeOf(subjects.Op("")):
		return enum("An operation: the <op> of memory.<op>.<device_id>.", strs(subjects.Ops())...)
	case reflect.TypeOf(subjects.Code("")):
		return &jsonschema.Schema{Ref: "#/$defs/" + ErrorCode}
	case reflect.TypeOf(json.RawMessage{}):
		return &jsonschema.Schema{}
	}
	return nil
}

// namer names schemas: events' data types get their event's name.
func namer(t reflect.Type) string {
	if strings.HasSuffix(t.PkgPath(), "/events") {
		return t.Name() + "EventData"
	}
	return t.Name()
}

func ref(to string) obj { return obj{{"$ref", to}} }

func pascal(s string) string {
	var b strings.Builder
	for _, part := range strings.Split(s, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

func itoas(v []int) []string {
	out := make([]string, len(v))
	for i, n := range v {
		out[i] = fmt.Sprint(n)
	}
	return out
}
