package node_test

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/internal/natstest"
)

// slowProxy forwards to addr, delaying server->client data by *delay.
func slowProxy(t *testing.T, addr string, delay *atomic.Int64) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				return
			}
			go io.Copy(s, c)
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						time.Sleep(time.Duration(delay.Load()))
						c.Write(buf[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestReleaseDuringARenewalIsNotConfirmed: Release while a renewal is in
// flight (a slow JetStream at shutdown) must not report the lease
// confirmed ("granting memory again").
func TestReleaseDuringARenewalIsNotConfirmed(t *testing.T) {
	srv := natstest.JetStream(t)
	var delay atomic.Int64
	u := "nats://" + slowProxy(t, srv.Addr().String(), &delay)
	nc, err := nats.Connect(u)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l, err := n1().Take(context.Background(), nc)
	if err != nil {
		t.Fatal(err)
	}
	wa, seen := watch()
	delay.Store(int64(200 * time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Keep(ctx, wa) // renews at once: 200 ms
	time.Sleep(50 * time.Millisecond)
	l.Release() // as the worker's shutdown does, before it stops Keep
	select {
	case c := <-seen.confirmed:
		t.Errorf("Release during a renewal: reported confirmed=%v", c)
	case <-time.After(time.Second):
	}
}
