package worker

import (
	"context"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// fleetHandler answers memory.<op>.all for every device of this node in one
// reply, so request-many gathers one reply per node.
func (w *Worker) fleetHandler(ctx context.Context, op subjects.Op, fn opFunc, instance string) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		start := time.Now()
		if !w.replyable(req) {
			return
		}
		env, err := subjects.DecodeRequest(req.Data(), op)
		if err != nil {
			requestID := ""
			if env != nil {
				requestID = env.RequestID
			}
			w.respond(req, op, subjects.Fleet, orNewID(requestID), err, start)
			return
		}
		who := callerOf(req)
		reply := subjects.FleetReply{Node: w.cfg.Node, Instance: instance, Devices: make([]subjects.FleetDevice, 0, len(w.gpus))}
		for _, g := range w.gpus {
			fd := subjects.FleetDevice{DeviceID: g.ID()}
			g.mu.Lock()
			data, err := fn(ctx, g, ledger.Call{Who: who, Now: time.Now()}, env.Data)
			g.mu.Unlock()
			if err == nil {
				fd.Data, err = gojson.Marshal(data)
			}
			if err != nil {
				we := wireError(err)
				fd.ErrorCode, fd.ErrorMessage = we.Code, we.Message
			} else {
				fd.Success = true
			}
			reply.Devices = append(reply.Devices, fd)
		}
		rw := newReplyWriter()
		defer rw.release()
		body, err := w.encodeReply(rw, orNewID(env.RequestID), reply, nil, time.Now(), nil)
		if err != nil {
			w.respond(req, op, subjects.Fleet, orNewID(env.RequestID), err, start)
			return
		}
		w.metrics.served(op, "", start)
		if err := req.Respond(body); err != nil {
			w.log.Warn("fleet reply failed", "op", op, "err", err)
		}
	})
}
