package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"
)

func leafUntil(notAfter time.Time) *tls.Certificate {
	return &tls.Certificate{Certificate: [][]byte{{1}}, Leaf: &x509.Certificate{NotAfter: notAfter}}
}

// TestMFACertsAskAgain: the tunnel's certificate opens sessions for its
// minute; after it, a connection is refused with what to do and one new
// MFA check runs, whose certificate the next connections get.
func TestMFACertsAskAgain(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	first := leafUntil(now.Add(time.Minute))
	second := leafUntil(now.Add(3 * time.Minute))
	asked := make(chan struct{}, 10)
	// The check waits for the test to let it pass, as a person would:
	// connections meanwhile are refused, however fast the machine.
	release := make(chan struct{})
	certs := newMFACerts(first, func(context.Context) (*tls.Certificate, error) {
		asked <- struct{}{}
		<-release
		return second, nil
	}, slog.New(slog.DiscardHandler), clock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go certs.Renew(ctx)

	if c, err := certs.Current(); err != nil || c != first {
		t.Fatalf("within the minute: %v", err)
	}
	mu.Lock()
	now = now.Add(61 * time.Second)
	mu.Unlock()
	for range 3 {
		_, err := certs.Current()
		if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), `approve the new check in the terminal running "sigil proxy db"`) {
			t.Fatalf("after the minute: %v", err)
		}
	}
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("no new MFA check was asked for")
	}
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := certs.Current()
		if err == nil && c == second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new certificate is not used: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(asked); n != 0 {
		t.Fatalf("%d more MFA checks were asked for; three refused connections need one", n)
	}
}
