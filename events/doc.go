// Package events holds memworker's CloudEvents: the versioned event types,
// the data they carry, and the Publisher the worker sends them with. Go
// subscribers use Decode to read them, in structured or binary mode.
//
// Pressure events go to memory.pressure.<device_id> (subjects.PressureEvents)
// as CloudEvents 1.0. Structured mode, the default, sends the whole event as
// JSON with the header Content-Type: application/cloudevents+json. Binary
// mode sends the data as the body and the attributes as ce- headers, as the
// CloudEvents NATS binding draft describes. When JetStream is available the
// events also land in the stream MEMORY_PRESSURE (deduplicated by event id,
// kept for a bounded age), so subscribers that were away can replay them.
package events
