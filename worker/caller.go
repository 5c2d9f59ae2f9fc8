package worker

import (
	"strings"

	gojson "github.com/goccy/go-json"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/worker/ledger"
)

// Tenants are NATS accounts. A request from another account reaches the
// worker through a service import: nats-server then stamps it with the
// header Nats-Request-Info, naming the account (acc) and, when the import
// shares it, the user, replacing any such header the client sent; and it
// routes the reply through a subject of its own (_R_.). The worker takes
// the tenant from the header only on such a request. A request from the
// worker's own account (no import: its reply subject is the client's own)
// is the operator's, whatever header it carries: users of that account
// may do everything anyway.
const (
	requestInfoHeader = "Nats-Request-Info"
	importReplyPrefix = "_R_."
)

// callerOf tells who sent req.
func callerOf(req micro.Request) ledger.Who {
	if !strings.HasPrefix(req.Reply(), importReplyPrefix) {
		return ledger.Who{}
	}
	h := req.Headers().Get(requestInfoHeader)
	if h == "" {
		return ledger.Who{}
	}
	var info struct {
		Account string `json:"acc"`
		User    string `json:"user"`
	}
	if gojson.Unmarshal([]byte(h), &info) != nil {
		return ledger.Who{}
	}
	return ledger.Who{Tenant: info.Account, User: info.User}
}
