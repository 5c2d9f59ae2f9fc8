package ledger

import (
	"cmp"
	"slices"

	"github.com/memworker/memworker/subjects"
)

// Who is the caller an operation acts for: a tenant (a NATS account other
// than the worker's own) and its user when the account shares it, or the
// operator (the zero Who), who sees and may do everything.
type Who struct {
	Tenant, User string
}

// Operator reports whether w is the operator.
func (w Who) Operator() bool { return w.Tenant == "" }

// visibleTo reports whether w may see and act on a.
func (a *allocation) visibleTo(w Who) bool { return w.Operator() || a.tenant == w.Tenant }

// AnyTenant is the quota key for every tenant without one of its own.
const AnyTenant = "*"

// tenantFigures are what a tenant holds on the device: the VRAM bytes it
// asked for (size_bytes, not the pool's rounding; what quotas cap) and its
// allocations.
type tenantFigures struct {
	requested   int64
	allocations int
}

// quota is the tenant's quota on the device, if it has one.
func (d *Device) quota(tenant string) (int64, bool) {
	if tenant == "" {
		return 0, false
	}
	if q, ok := d.cfg.Quotas[tenant]; ok {
		return q, true
	}
	q, ok := d.cfg.Quotas[AnyTenant]
	return q, ok
}

// TenantUsage is w's usage of the device; ok is false for the operator.
func (d *Device) TenantUsage(w Who) (subjects.TenantUsage, bool) {
	if w.Operator() {
		return subjects.TenantUsage{}, false
	}
	u := subjects.TenantUsage{Tenant: w.Tenant}
	if f := d.tenants[w.Tenant]; f != nil {
		u.AllocatedBytes, u.Allocations = f.requested, f.allocations
	}
	u.QuotaBytes, _ = d.quota(w.Tenant)
	return u, true
}

// Tenants lists every tenant holding memory on the device, and those with
// a quota, by name.
func (d *Device) Tenants() []subjects.TenantUsage {
	seen := map[string]bool{}
	var out []subjects.TenantUsage
	for t := range d.tenants {
		if t != "" {
			seen[t] = true
		}
	}
	for t := range d.cfg.Quotas {
		if t != AnyTenant {
			seen[t] = true
		}
	}
	for t := range seen {
		u, _ := d.TenantUsage(Who{Tenant: t})
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b subjects.TenantUsage) int { return cmp.Compare(a.Tenant, b.Tenant) })
	return out
}
