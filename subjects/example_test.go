package subjects_test

import (
	"fmt"

	"github.com/memworker/memworker/subjects"
)

// Subjects and queue groups are built here and nowhere else.
func ExampleRequest() {
	dev := subjects.DeviceID("node1", 0)
	fmt.Println(subjects.Request(subjects.Allocate, dev))
	fmt.Println(subjects.QueueGroup(dev))
	fmt.Println(subjects.FleetRequest(subjects.GetStatus))
	fmt.Println(subjects.PressureEvents(dev))
	// Output:
	// memory.allocate.node1-gpu0
	// memory-node1-gpu0
	// memory.get_status.all
	// memory.pressure.node1-gpu0
}

// Parse reads the operation and device of a request subject.
func ExampleParse() {
	op, dev, err := subjects.Parse("memory.get_usage.node1-gpu3")
	fmt.Println(op, dev, err)
	_, _, err = subjects.Parse("memory.launch.node1-gpu3")
	fmt.Println(err != nil)
	// Output:
	// get_usage node1-gpu3 <nil>
	// true
}

// A request is an envelope around the operation's payload; a reply is
// decoded into the operation's reply type, or gives the wire error.
func ExampleNewRequest() {
	body, _ := subjects.NewRequest("r-1", subjects.Allocate, subjects.AllocateRequest{SizeBytes: 1 << 30, Purpose: "kv_cache"})
	fmt.Println(string(body))

	var a subjects.Allocation
	reply, err := subjects.DecodeReply([]byte(`{"success":true,"request_id":"r-1","timestamp":"2026-11-26T12:00:00Z","data":{"allocation_id":"a-1","size_bytes":1073741824}}`), &a)
	fmt.Println(reply.RequestID, a.AllocationID, a.SizeBytes, err)

	_, err = subjects.DecodeReply([]byte(`{"success":false,"request_id":"r-2","timestamp":"2026-11-26T12:00:00Z","error_code":"OUT_OF_MEMORY","error_message":"no room"}`), &a)
	fmt.Println(err)
	// Output:
	// {"request_id":"r-1","action":"memory.allocate","data":{"size_bytes":1073741824,"purpose":"kv_cache"}}
	// r-1 a-1 1073741824 <nil>
	// OUT_OF_MEMORY: no room
}

// Requests accept PascalCase and camelCase keys, as a .NET client without
// a naming policy sends them.
func ExampleDecode() {
	var req subjects.AllocateRequest
	err := subjects.Decode([]byte(`{"SizeBytes":4096,"ModelId":"llama","allocationType":"pinned"}`), &req)
	fmt.Println(req.SizeBytes, req.ModelID, req.AllocationType, err)
	// Output:
	// 4096 llama pinned <nil>
}
