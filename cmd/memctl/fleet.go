package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
)

// fleetStall is how long a fleet request waits for one more node.
const fleetStall = 300 * time.Millisecond

// perDevice sends op with data to --device, or to every device of the
// fleet, and returns each device's reply data by device id.
func (e *env) perDevice(op subjects.Op, data any) (map[string]json.RawMessage, error) {
	replies, _, err := e.perDeviceBy(op, data, e.client.Fleet)
	return replies, err
}

// fleetGather is a client's fleet request: Fleet, or wholeFleet.
type fleetGather func(ctx context.Context, op subjects.Op, data any, stall time.Duration) (*client.FleetResult, error)

// wholeFleet waits out the stall whatever the node leases say: for an
// answer that a node without a lease, answering late, could change.
func (e *env) wholeFleet(ctx context.Context, op subjects.Op, data any, stall time.Duration) (*client.FleetResult, error) {
	return e.client.FleetExpect(ctx, op, data, stall, 0)
}

// perDeviceBy is perDevice with gather for the fleet; graced says the
// gather ended on the leases' grace (client.FleetResult.Graced).
func (e *env) perDeviceBy(op subjects.Op, data any, gather fleetGather) (replies map[string]json.RawMessage, graced bool, err error) {
	if e.cli.Device != "" {
		var raw json.RawMessage
		if _, err := e.client.Do(e.ctx, op, e.cli.Device, data, &raw); err != nil {
			return nil, false, err
		}
		return map[string]json.RawMessage{e.cli.Device: raw}, false, nil
	}
	res, err := gather(e.ctx, op, data, fleetStall)
	if err != nil {
		return nil, false, err
	}
	out := map[string]json.RawMessage{}
	for _, n := range res.Nodes {
		for _, d := range n.Devices {
			if d.Success {
				out[d.DeviceID] = d.Data
			}
		}
	}
	if len(out) == 0 {
		return nil, false, &exitError{exitUnreachable, errors.New("no worker answered: no device to talk to")}
	}
	return out, res.Graced, nil
}

// devicesOf finds the device of each allocation id (ids are unique across
// the fleet): --device when given, else a fleet lookup. An id no device
// holds is an error that names it.
func (e *env) devicesOf(ids []string) (map[string][]string, error) {
	if e.cli.Device != "" {
		return map[string][]string{e.cli.Device: ids}, nil
	}
	if groups, ok := e.cachedDevicesOf(ids); ok {
		return groups, nil
	}
	out, missing, graced, err := e.findIDs(ids, e.client.Fleet)
	if err == nil && missing != "" && graced {
		// The gather ended on the leases' grace: a node without a lease
		// may answer later. A miss is asked of the whole fleet again.
		out, missing, _, err = e.findIDs(ids, e.wholeFleet)
	}
	switch {
	case err != nil:
		return nil, err
	case missing != "":
		return nil, &exitError{exitWorkerError, fmt.Errorf("ALLOCATION_NOT_FOUND: no device of the fleet holds allocation %s", missing)}
	}
	return out, nil
}

// findIDs asks the fleet (by gather) which devices hold ids; missing is
// an id none holds.
func (e *env) findIDs(ids []string, gather fleetGather) (out map[string][]string, missing string, graced bool, err error) {
	replies, graced, err := e.perDeviceBy(subjects.GetAllocations, subjects.AllocationsRequest{AllocationIDs: ids, Limit: subjects.MaxPageLimit}, gather)
	if err != nil {
		return nil, "", false, err
	}
	out = map[string][]string{}
	found := map[string]bool{}
	for dev, raw := range replies {
		var page subjects.AllocationsReply
		if json.Unmarshal(raw, &page) != nil {
			continue
		}
		for _, a := range page.Allocations {
			out[dev] = append(out[dev], a.AllocationID)
			found[a.AllocationID] = true
			e.ids.put(a.AllocationID, dev)
		}
	}
	for _, id := range ids {
		if !found[id] {
			return out, id, graced, nil
		}
	}
	return out, "", graced, nil
}

// cachedDevicesOf groups ids by the devices the cache names and asks each
// of those devices directly whether it holds them; ok only when every id
// is confirmed, else the caller asks the fleet.
func (e *env) cachedDevicesOf(ids []string) (map[string][]string, bool) {
	groups := map[string][]string{}
	for _, id := range ids {
		dev, ok := e.ids.Dev[id]
		if !ok {
			return nil, false
		}
		groups[dev] = append(groups[dev], id)
	}
	for dev, want := range groups {
		var page subjects.AllocationsReply
		if _, err := e.client.Do(e.ctx, subjects.GetAllocations, dev, subjects.AllocationsRequest{AllocationIDs: want, Limit: subjects.MaxPageLimit}, &page); err != nil || len(page.Allocations) != len(want) {
			e.ids.forget(want...)
			return nil, false
		}
	}
	return groups, true
}

// roomiest is --device, or the fleet's device with the most available
// memory (and a note saying so).
func (e *env) roomiest() (dev, note string, err error) {
	if e.cli.Device != "" {
		return e.cli.Device, "", nil
	}
	replies, err := e.perDevice(subjects.GetUsage, nil)
	if err != nil {
		return "", "", err
	}
	type avail struct {
		dev   string
		bytes int64
	}
	var all []avail
	for d, raw := range replies {
		var u subjects.Usage
		if json.Unmarshal(raw, &u) == nil {
			all = append(all, avail{d, u.AvailableBytes})
		}
	}
	if len(all) == 0 {
		return "", "", &exitError{exitUnreachable, errors.New("no device answered")}
	}
	slices.SortFunc(all, func(a, b avail) int { return cmp.Or(cmp.Compare(b.bytes, a.bytes), cmp.Compare(a.dev, b.dev)) })
	if len(all) == 1 {
		return all[0].dev, "", nil
	}
	return all[0].dev, fmt.Sprintf("(the device with the most available memory, %s)", size(all[0].bytes)), nil
}
