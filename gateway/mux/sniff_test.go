package mux

import (
	"bytes"
	"encoding/binary"
	"io"
	"slices"
	"strings"
	"testing"
)

func pgPacket(length, code uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, length)
	return binary.BigEndian.AppendUint32(b, code)
}

// fragment re-frames a single-record ClientHello as two TLS records.
func fragment(t *testing.T, hello []byte, at int) []byte {
	t.Helper()
	body := hello[tlsRecordHeaderLen:]
	if at <= 0 || at >= len(body) {
		t.Fatalf("bad split %d of %d", at, len(body))
	}
	rec := func(p []byte) []byte {
		h := []byte{tlsRecordHandshake, hello[1], hello[2], 0, 0}
		binary.BigEndian.PutUint16(h[3:], uint16(len(p)))
		return append(h, p...)
	}
	return append(rec(body[:at]), rec(body[at:])...)
}

func TestSniff(t *testing.T) {
	hello := clientHelloBytes(t, "db.example.com", "sigil-postgres", "h2")
	startup := append(pgPacket(9, pgProtocolV3), 0)

	tests := []struct {
		name      string
		in        []byte
		wantProto Protocol
		wantALPN  []string
		wantSNI   string
		wantErr   string
	}{
		{name: "tls", in: hello, wantProto: ProtocolTLS, wantALPN: []string{"sigil-postgres", "h2"}, wantSNI: "db.example.com"},
		{name: "tls split over two records", in: fragment(t, hello, 40), wantProto: ProtocolTLS, wantALPN: []string{"sigil-postgres", "h2"}, wantSNI: "db.example.com"},
		{name: "tls with trailing bytes", in: append(slices.Clone(hello), "extra"...), wantProto: ProtocolTLS, wantALPN: []string{"sigil-postgres", "h2"}, wantSNI: "db.example.com"},
		{name: "sslrequest", in: pgPacket(8, pgSSLRequestCode), wantProto: ProtocolPostgresSSLRequest},
		{name: "gssencrequest", in: pgPacket(8, pgGSSENCRequestCode), wantProto: ProtocolPostgresSSLRequest},
		{name: "plain startup", in: startup, wantProto: ProtocolPostgresPlain},
		{name: "cancel request", in: append(pgPacket(16, pgCancelRequestCode), 1, 2, 3, 4, 5, 6, 7, 8), wantProto: ProtocolPostgresPlain},
		{name: "ssh", in: []byte("SSH-2.0-x\r\n"), wantProto: ProtocolSSH},
		{name: "empty", in: nil, wantErr: "EOF"},
		{name: "http", in: []byte("GET / HTTP/1.1\r\n\r\n"), wantErr: "unrecognised protocol preamble"},
		{name: "almost ssh", in: []byte("SSX-2.0\r\n"), wantErr: "unrecognised protocol preamble"},
		{name: "short ssh", in: []byte("SS"), wantErr: "EOF"},
		{name: "bad pg code", in: pgPacket(8, 1234), wantErr: "unrecognised PostgreSQL packet"},
		{name: "huge pg startup", in: pgPacket(1<<20, pgProtocolV3), wantErr: "unrecognised PostgreSQL packet"},
		{name: "short pg", in: []byte{0, 0, 0, 8, 4}, wantErr: "EOF"},
		{name: "oversized tls record", in: []byte{0x16, 3, 1, 0xff, 0xff}, wantErr: "TLS record length 65535 outside"},
		{name: "empty tls record", in: []byte{0x16, 3, 1, 0, 0}, wantErr: "TLS record length 0 outside"},
		{name: "bad tls version", in: []byte{0x16, 2, 0, 0, 5}, wantErr: "unsupported TLS record version"},
		{name: "truncated hello", in: hello[:20], wantErr: "EOF"},
		{name: "truncated second record", in: fragment(t, hello, 40)[:60], wantErr: "malformed TLS ClientHello"},
		{name: "tls record of garbage", in: []byte{0x16, 3, 1, 0, 4, 1, 2, 3, 4}, wantErr: "malformed TLS ClientHello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := sniff(bytes.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("sniff: %v", err)
			}
			if res.proto != tt.wantProto {
				t.Fatalf("proto = %q, want %q", res.proto, tt.wantProto)
			}
			if !bytes.HasPrefix(tt.in, res.buf) || len(res.buf) == 0 {
				t.Fatalf("replay buffer %q is not a prefix of the input", res.buf)
			}
			if tt.wantProto != ProtocolTLS {
				if res.hello != nil {
					t.Fatalf("unexpected hello %+v", res.hello)
				}
				return
			}
			if res.hello.ServerName != tt.wantSNI || !slices.Equal(res.hello.ALPN, tt.wantALPN) {
				t.Fatalf("hello = %+v, want SNI %q ALPN %q", res.hello, tt.wantSNI, tt.wantALPN)
			}
		})
	}
}

// A client must not make the mux buffer more than one maximal record, even
// when its hello claims to continue over further records.
func TestSniffBoundsBuffering(t *testing.T) {
	record := func(body []byte) []byte {
		h := []byte{tlsRecordHandshake, 3, 1, 0, 0}
		binary.BigEndian.PutUint16(h[3:], uint16(len(body)))
		return append(h, body...)
	}
	first := make([]byte, maxTLSPlaintextSize)
	copy(first, []byte{1, 0x00, 0xff, 0xff}) // ClientHello of 65535 bytes
	in := record(first)
	for range 4 {
		in = append(in, record(make([]byte, maxTLSPlaintextSize))...)
	}
	r := &countingReader{r: bytes.NewReader(in)}
	_, err := sniff(r)
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err = %v, want a size limit error", err)
	}
	if r.n > maxSniffBytes {
		t.Fatalf("read %d bytes, limit %d", r.n, maxSniffBytes)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Every truncation and single-byte corruption of a real hello must either
// parse or fail cleanly; this runs the parse path without -fuzz.
func TestSniffCorruptedHellos(t *testing.T) {
	hello := clientHelloBytes(t, "localhost", "h2", "sigil-postgres")
	for i := range hello {
		if res, err := sniff(bytes.NewReader(hello[:i])); err == nil {
			t.Fatalf("truncation at %d parsed as %q", i, res.proto)
		}
		corrupt := slices.Clone(hello)
		corrupt[i] ^= 0xff
		if res, err := sniff(bytes.NewReader(corrupt)); err == nil && !bytes.HasPrefix(corrupt, res.buf) {
			t.Fatalf("corruption at %d: replay buffer not a prefix", i)
		}
	}
}

// FuzzSniff feeds arbitrary bytes to the sniff and ClientHello parse path:
// it must never panic, and a recognised stream must replay a prefix of itself.
func FuzzSniff(f *testing.F) {
	hello := clientHelloBytes(f, "localhost", "h2", "sigil-postgres")
	f.Add(hello)
	f.Add(hello[:20])
	f.Add(pgPacket(8, pgSSLRequestCode))
	f.Add(append(pgPacket(9, pgProtocolV3), 0))
	f.Add([]byte("SSH-2.0-x\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{0x16, 3, 1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := sniff(bytes.NewReader(data))
		if err != nil {
			return
		}
		if !bytes.HasPrefix(data, res.buf) {
			t.Fatalf("replay buffer is not a prefix of the input")
		}
		if len(res.buf) > maxSniffBytes {
			t.Fatalf("buffered %d bytes, limit %d", len(res.buf), maxSniffBytes)
		}
		if (res.proto == ProtocolTLS) != (res.hello != nil) {
			t.Fatalf("proto %q with hello %v", res.proto, res.hello)
		}
	})
}

func BenchmarkSniff(b *testing.B) {
	inputs := map[string][]byte{
		"tls":        clientHelloBytes(b, "localhost", "sigil-postgres"),
		"sslrequest": pgPacket(8, pgSSLRequestCode),
		"ssh":        []byte("SSH-2.0-OpenSSH_9.6\r\n"),
	}
	for name, in := range inputs {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := sniff(bytes.NewReader(in)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
