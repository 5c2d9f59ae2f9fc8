package client

import (
	"errors"

	"github.com/nats-io/nats.go"
)

// Flags are the NATS connection flags memworker and memctl share:
// credentials (user/password, token, NKey seed, creds file) and TLS, for
// embedding in a kong CLI struct.
type Flags struct {
	Creds    string `name:"creds" env:"NATS_CREDS" help:"NATS credentials file (JWT and NKey seed)." type:"existingfile"`
	NKey     string `name:"nkey" env:"NATS_NKEY" help:"NATS NKey seed file." type:"existingfile"`
	User     string `name:"user" env:"NATS_USER" help:"NATS user name."`
	Password string `name:"password" env:"NATS_PASSWORD" help:"NATS password."`
	Token    string `name:"token" env:"NATS_TOKEN" help:"NATS authentication token."`
	TLSCA    string `name:"tls-ca" help:"CA certificate to verify the NATS server with." type:"existingfile"`
	TLSCert  string `name:"tls-cert" help:"Client certificate for TLS." type:"existingfile"`
	TLSKey   string `name:"tls-key" help:"Client key for TLS." type:"existingfile"`
	// InboxPrefix is where replies come back. The default, _INBOX, is
	// shared: any user allowed to subscribe to _INBOX.> reads everyone's
	// replies. docs/nats-server.conf gives each user its own prefix.
	InboxPrefix string `name:"inbox-prefix" env:"NATS_INBOX_PREFIX" help:"Prefix of this client's reply subjects (default _INBOX); give each NATS user its own (docs/nats-server.conf: _INBOX_<user>) so no other user can read its replies."`
}

// Options turns the flags into nats.go options.
func (f *Flags) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if f.Creds != "" {
		opts = append(opts, nats.UserCredentials(f.Creds))
	}
	if f.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(f.NKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if f.User != "" {
		opts = append(opts, nats.UserInfo(f.User, f.Password))
	}
	if f.Token != "" {
		opts = append(opts, nats.Token(f.Token))
	}
	if f.TLSCA != "" {
		opts = append(opts, nats.RootCAs(f.TLSCA))
	}
	if (f.TLSCert == "") != (f.TLSKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if f.TLSCert != "" {
		opts = append(opts, nats.ClientCert(f.TLSCert, f.TLSKey))
	}
	if f.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(f.InboxPrefix))
	}
	return opts, nil
}
