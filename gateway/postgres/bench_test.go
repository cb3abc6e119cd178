package postgres

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"google.golang.org/protobuf/proto"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// benchCert is a throwaway self-signed P-256 certificate for both TLS
// hops of the benchmark.
func benchCert(b *testing.B) tls.Certificate {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serveBenchUpstream answers like PostgreSQL does for pgbench -S: a
// one-row result per Query or Execute, and one flush per ReadyForQuery.
func serveBenchUpstream(conn net.Conn) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("42")}}
	desc := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	done := &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.Query:
			be.Send(desc)
			be.Send(row)
			be.Send(done)
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Parse:
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			be.Send(desc)
		case *pgproto3.Execute:
			be.Send(row)
			be.Send(done)
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return
		default:
			continue
		}
		switch msg.(type) {
		case *pgproto3.Query, *pgproto3.Sync:
			if err := be.Flush(); err != nil {
				return
			}
		}
	}
}

// marshalStore stands in for the audit store: it encodes each event as
// the badger store does on Append and drops it.
type marshalStore struct {
	store.Store
	n atomic.Int64
}

func (m *marshalStore) Append(ctx context.Context, ev *audit.Event, durable bool) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	m.n.Add(int64(len(b)))
	return err
}

// benchGateway relays TLS clients to a TLS upstream through relays whose
// events go to an audit.StoreEmitter, as the server does for a session.
func benchGateway(b *testing.B, cert tls.Certificate, upAddr string) net.Listener {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{})
	if err != nil {
		b.Fatal(err)
	}
	em := audit.NewStoreEmitter(&marshalStore{})
	ident := &audit.Identity{User: "alice@example.com", Kind: "human", Roles: []string{"dev"}, CertSerial: "0123456789abcdef"}
	res := &audit.Resource{Kind: "database", Name: "bench", DbUser: "bench", DbName: "pgbench"}
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	upCfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				client := tls.Server(c, srvCfg)
				defer client.Close()
				up, err := tls.Dial("tcp", upAddr, upCfg)
				if err != nil {
					return
				}
				defer up.Close()
				ctx := context.Background()
				r := newRelay(relayConfig{
					policy:   sqlpolicy.Grant{Statements: "read", Role: "dev"},
					classify: cl.Classify,
					emit: func(ev *audit.Event) {
						ev.SessionId = "5f0c5d1e-7d3a-4c8e-9a51-4d2b8f1e0c11"
						ev.Identity = ident
						ev.Resource = res
						ev.ClientAddr = "127.0.0.1:5555"
						_ = audit.EmitOwned(ctx, em, ev)
					},
				}, bufio.NewReaderSize(client, 32<<10), bufio.NewWriterSize(up, 32<<10), client)
				done := make(chan struct{})
				go func() {
					_ = r.serverLoop(bufio.NewReaderSize(up, serverChunk))
					client.Close()
					close(done)
				}()
				_ = r.clientLoop(ctx)
				up.Close()
				<-done
			}()
		}
	}()
	return ln
}

// benchFrontend encodes frontend messages.
func benchFrontend(b *testing.B, msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		out, err = m.Encode(out)
		if err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// readUntilReady consumes backend messages up to ReadyForQuery.
func readUntilReady(r *bufio.Reader) error {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if _, err := r.Discard(n); err != nil {
			return err
		}
		switch hdr[0] {
		case 'Z':
			return nil
		case 'E':
			return fmt.Errorf("server error")
		}
	}
}

// BenchmarkRelay measures a pgbench -S like workload through the relay
// over loopback TCP and TLS on both hops: ns/op is wall time per
// transaction over all clients, allocs/op counts the whole process
// (clients and fake upstream included).
func BenchmarkRelay(b *testing.B) {
	cert := benchCert(b)
	upLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	defer upLn.Close()
	go func() {
		for {
			c, err := upLn.Accept()
			if err != nil {
				return
			}
			go serveBenchUpstream(c)
		}
	}()
	gw := benchGateway(b, cert, upLn.Addr().String())
	defer gw.Close()
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	clientCfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}

	const stmt = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	modes := []struct {
		name  string
		setup []byte
		tx    []byte
	}{
		{
			name:  "prepared",
			setup: benchFrontend(b, &pgproto3.Parse{Name: "P0_1", Query: stmt}, &pgproto3.Sync{}),
			tx: benchFrontend(b,
				&pgproto3.Bind{PreparedStatement: "P0_1", Parameters: [][]byte{[]byte("12345")}},
				&pgproto3.Execute{}, &pgproto3.Sync{}),
		},
		{
			name: "simple",
			tx:   benchFrontend(b, &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"}),
		},
	}
	for _, mode := range modes {
		for _, clients := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/clients=%d", mode.name, clients), func(b *testing.B) {
				type conn struct {
					c *tls.Conn
					r *bufio.Reader
				}
				conns := make([]conn, clients)
				for i := range conns {
					c, err := tls.Dial("tcp", gw.Addr().String(), clientCfg)
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					conns[i] = conn{c: c, r: bufio.NewReaderSize(c, 16<<10)}
					if mode.setup != nil {
						if _, err := c.Write(mode.setup); err != nil {
							b.Fatal(err)
						}
						if err := readUntilReady(conns[i].r); err != nil {
							b.Fatal(err)
						}
					}
				}
				var left atomic.Int64
				left.Store(int64(b.N))
				var wg sync.WaitGroup
				errs := make(chan error, clients)
				b.ReportAllocs()
				b.ResetTimer()
				for _, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for left.Add(-1) >= 0 {
							if _, err := c.c.Write(mode.tx); err != nil {
								errs <- err
								return
							}
							if err := readUntilReady(c.r); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
			})
		}
	}
}
