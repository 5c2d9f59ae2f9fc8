package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
)

// startConfiguredServer starts a server from docs/nats-server.conf, on a
// random port and a temporary store.
func startConfiguredServer(t *testing.T) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile("../docs/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Port, opts.StoreDir, opts.NoSigs, opts.NoLog = -1, t.TempDir(), true, true
	return serve(t, opts)
}

func connectAs(t *testing.T, srv *server.Server, user, password string) *nats.Conn {
	t.Helper()
	f := client.Flags{User: user, Password: password, InboxPrefix: "_INBOX_" + user}
	opts, err := f.Options()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL(), append(opts, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
	if err != nil {
		t.Fatalf("connecting as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestRolesFromTheSampleConfig proves the roles of docs/nats-server.conf:
// the worker serves with its narrow user, a reader reads and watches but
// its mutations are refused by the server, an operator acts, and nobody
// but the worker forges events.
func TestRolesFromTheSampleConfig(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startConfiguredServer(t)
	h := startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB))
	reader := connectAs(t, srv, "reader", "change-me-reader")
	operator := connectAs(t, srv, "operator", "change-me-operator")

	// The reader: reads, discovery and events work.
	call(t, reader, subjects.GetStatus, "n1-gpu0", nil, nil)
	call(t, reader, subjects.Analytics, "n1-gpu0", nil, nil)
	call(t, reader, subjects.OptimizationRecs, "n1-gpu0", nil, nil)
	if _, err := reader.Request("$SRV.INFO.memory", nil, 2*time.Second); err != nil {
		t.Errorf("reader: micro discovery: %v", err)
	}
	events, err := reader.SubscribeSync(subjects.AllPressureEvents)
	if err != nil {
		t.Fatal(err)
	}
	_ = reader.Flush()

	// ... but every mutation is refused by the server and changes nothing.
	for _, op := range []subjects.Op{subjects.Allocate, subjects.Deallocate, subjects.Clear, subjects.Defragment, subjects.Transfer, subjects.Optimize, subjects.ModelOptimize} {
		if _, err := reader.Request(subjects.Request(op, "n1-gpu0"), []byte(`{"data":{"size_bytes":1024}}`), 300*time.Millisecond); err == nil {
			t.Errorf("reader: %s was answered", op)
		}
	}
	if u := checkLedger(t, operator, h, "n1-gpu0", 0); u.Allocations != 0 {
		t.Errorf("a reader's refused allocate allocated %d", u.Allocations)
	}

	// The operator acts; the reader sees the event it causes, but not the
	// operator's reply: replies go to inboxes of their own user.
	snoop, err := reader.SubscribeSync("_INBOX_operator.>")
	if err != nil {
		t.Fatal(err)
	}
	shared, err := reader.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = reader.Flush()
	call(t, operator, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 900 * MiB}, nil)
	if _, err := events.NextMsg(2 * time.Second); err != nil {
		t.Errorf("reader got no pressure event: %v", err)
	}
	for _, sub := range []*nats.Subscription{snoop, shared} {
		if msg, err := sub.NextMsg(200 * time.Millisecond); err == nil {
			t.Errorf("the reader read a reply on %s: %s", msg.Subject, msg.Data)
		}
	}

	// Forged events are refused for the operator and the reader.
	for name, nc := range map[string]*nats.Conn{"operator": operator, "reader": reader} {
		_ = nc.Publish(subjects.PressureEvents("n1-gpu0"), []byte(`{"forged":true}`))
		_ = nc.Flush()
		if msg, err := events.NextMsg(300 * time.Millisecond); err == nil {
			t.Errorf("%s forged an event: %s", name, msg.Data)
		}
	}
	// The worker's user cannot send requests: it cannot act as a client.
	wnc := connectAs(t, srv, "worker", "change-me-worker")
	if _, err := wnc.Request(subjects.Request(subjects.Clear, "n1-gpu0"), []byte(`{"data":{"force":true}}`), 300*time.Millisecond); err == nil {
		t.Error("the worker's user sent a clear")
	}
	if _, err := nats.Connect(srv.ClientURL(), nats.UserInfo("reader", "wrong")); err == nil {
		t.Error("a wrong password was accepted")
	}
}

// TestTLS serves over TLS with client certificates: a client with a
// trusted certificate works, one without is refused. The clients use the
// flags memworker and memctl share.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, dir, "ca", nil, nil)
	newCert(t, dir, "server", ca, caKey)
	newCert(t, dir, "client", ca, caKey)
	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
		CaFile: filepath.Join(dir, "ca.pem"), Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, TLS: true, TLSConfig: tlsConfig, TLSVerify: true})

	dial := func(f client.Flags) (*nats.Conn, error) {
		opts, err := f.Options()
		if err != nil {
			return nil, err
		}
		return nats.Connect(srv.ClientURL(), opts...)
	}
	good := client.Flags{TLSCA: filepath.Join(dir, "ca.pem"), TLSCert: filepath.Join(dir, "client.pem"), TLSKey: filepath.Join(dir, "client-key.pem")}
	wnc, err := dial(good)
	if err != nil {
		t.Fatalf("trusted client refused: %v", err)
	}
	t.Cleanup(wnc.Close)
	startWorkerOn(t, context.Background(), wnc, "n1", withDevices(1, GiB))
	cnc, err := dial(good)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cnc.Close)
	call(t, cnc, subjects.GetUsage, "n1-gpu0", nil, nil)

	if nc, err := dial(client.Flags{TLSCA: filepath.Join(dir, "ca.pem")}); err == nil {
		nc.Close()
		t.Error("a client without a certificate was accepted")
	}
	if _, err := dial(client.Flags{TLSCert: filepath.Join(dir, "client.pem")}); err == nil {
		t.Error("--tls-cert without --tls-key was accepted")
	}
}

// newCert writes name.pem and name-key.pem in dir: a CA when parent is nil,
// else a certificate for 127.0.0.1 signed by parent.
func newCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "memworker test " + name},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"localhost"},
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}
