package contract

import (
	"fmt"
	"strings"

	"github.com/memworker/memworker/subjects"
)

// AccountsPath is where go generate writes the accounts config, relative
// to the module's root.
const AccountsPath = "docs/accounts.conf"

// Where the generated accounts config listens and stores: beside a default
// worker (its embedded server takes 4222) and writable without root.
const (
	AccountsListen   = "127.0.0.1:4223"
	AccountsStoreDir = "/tmp/memworker-accounts/jetstream"
)

// Tenant is a tenant account of the accounts config and its one user.
type Tenant struct {
	Account, User, Password string
}

// SampleTenants are the tenants of docs/accounts.conf.
var SampleTenants = []Tenant{{"TEAM_A", "alice", "change-me-alice"}, {"TEAM_B", "bob", "change-me-bob"}}

const accountsHeader = `# A nats-server configuration where teams are NATS accounts and the worker
# is the memory coordinator of the host for all of them. Generated from the
# contract (package subjects) by go generate ./contract: do not edit; change
# contract/accounts.go. Run it beside a default worker with
# nats-server -c docs/accounts.conf (it listens on %[1]s), then
# memworker --nats-url nats://%[1]s --user worker --password change-me-worker;
# or have memworker start its embedded server with it:
# memworker --nats-config docs/accounts.conf --user worker --password change-me-worker.
# integration/tenants_test.go loads this very file and proves each rule.
#
# - MEMORY is the worker's account. Its users (the worker, operators) are
#   the operator: they see and may do everything.
# - It exports each operation's subjects as a service, memory.<op>.* (never
#   memory.>, which would let a tenant publish into the event subjects),
#   pressure and lifecycle events as streams, and to each tenant alone the
#   allocation events of its own allocations, memory.allocation.*.<tenant>.
# - Each tenant account imports them, the services with share: true, so
#   nats-server stamps every request with Nats-Request-Info (the account and
#   the user) and a client cannot forge it. The worker takes the tenant from
#   that header, on requests that came through an import only.
# - Each tenant exports holders.<tenant>.> to MEMORY alone: the worker asks
#   the tenant's holders (allocations made with reclaim) to give memory
#   back on subjects there, and a tenant may name no other.
# - Replies and inboxes are per account: a tenant cannot read another's.
#
# In production keep bcrypted passwords, NKeys or JWT accounts, and TLS.

listen: %[1]s

jetstream {
  store_dir: %[2]q
}

`

// Accounts is the nats-server configuration of a worker account MEMORY
// (users worker and operator) and the tenants: every operation of the
// catalogue is exported and imported, so none can be forgotten.
func Accounts(tenants []Tenant) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, accountsHeader, AccountsListen, AccountsStoreDir)
	b.WriteString("accounts {\n  MEMORY: {\n    jetstream: enabled\n    users: [\n")
	b.WriteString("      { user: worker, password: \"change-me-worker\" }\n")
	b.WriteString("      { user: operator, password: \"change-me-operator\" }\n    ]\n    exports: [\n")
	for _, op := range subjects.Ops() {
		fmt.Fprintf(&b, "      { service: %q }\n", subjects.Request(op, "*"))
	}
	for _, s := range []string{subjects.AllPressureEvents, subjects.AllLifecycleEvents} {
		fmt.Fprintf(&b, "      { stream: %q }\n", s)
	}
	for _, t := range tenants {
		fmt.Fprintf(&b, "      { stream: %q, accounts: [%s] }\n", subjects.TenantAllocationEvents(t.Account), t.Account)
	}
	b.WriteString("    ]\n    imports: [\n")
	for _, t := range tenants {
		fmt.Fprintf(&b, "      { service: { account: %s, subject: %q } }\n", t.Account, subjects.HolderSubjects(t.Account))
	}
	b.WriteString("    ]\n  }\n")
	for _, t := range tenants {
		fmt.Fprintf(&b, "  %s: {\n    users: [ { user: %s, password: %q } ]\n    imports: [\n", t.Account, t.User, t.Password)
		for _, op := range subjects.Ops() {
			fmt.Fprintf(&b, "      { service: { account: MEMORY, subject: %q }, share: true }\n", subjects.Request(op, "*"))
		}
		for _, s := range []string{subjects.AllPressureEvents, subjects.AllLifecycleEvents, subjects.TenantAllocationEvents(t.Account)} {
			fmt.Fprintf(&b, "      { stream: { account: MEMORY, subject: %q } }\n", s)
		}
		fmt.Fprintf(&b, "    ]\n    exports: [\n      { service: %q, accounts: [MEMORY] }\n    ]\n  }\n", subjects.HolderSubjects(t.Account))
	}
	b.WriteString("  SYS: {\n    users: [ { user: sys, password: \"change-me-sys\" } ]\n  }\n}\nsystem_account: SYS\n")
	return []byte(b.String())
}
