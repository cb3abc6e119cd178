package main

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestTunnelSpec(t *testing.T) {
	for _, tc := range []struct {
		in, wantErr    string
		db, user, name string
		port           int
	}{
		{in: "pg1:15432", db: "pg1", port: 15432},
		{in: "pg1:0:app", db: "pg1", user: "app"},
		{in: "my1:13306:app:orders", db: "my1", port: 13306, user: "app", name: "orders"},
		{in: "pg1", wantErr: "want NAME:PORT"},
		{in: ":15432", wantErr: "want NAME:PORT"},
		{in: "pg1:x", wantErr: `"x" is not a TCP port`},
		{in: "pg1:70000", wantErr: "is not a TCP port"},
		{in: "a:1:b:c:d", wantErr: "want NAME:PORT"},
	} {
		got, err := tunnelSpec(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.database != tc.db || got.port != tc.port || got.user != tc.user || got.name != tc.name || !got.tunnel {
			t.Errorf("%q = %+v, %v", tc.in, got, err)
		}
	}
}

func TestRenewAt(t *testing.T) {
	start := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: start, NotAfter: start.Add(90 * time.Minute)}
	if got, want := renewAt(cert), start.Add(time.Hour); !got.Equal(want) {
		t.Fatalf("renewAt = %v, want %v (a third of the life left)", got, want)
	}
}
