// Package subjects is memworker's wire contract: the catalogue of the 16
// memory operations, the subjects and queue groups they are served on, the
// request/response envelope, the payload types of every operation and the
// stable error codes.
//
// Clients import it to build subjects and decode replies; the worker imports
// it to serve them. It imports nothing else of this module, so subject
// strings are built in exactly one place.
package subjects
