package mysql

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// discardConn swallows writes and reads EOF.
type discardConn struct{}

func (discardConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) Close() error                     { return nil }
func (discardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (discardConn) SetDeadline(time.Time) error      { return nil }
func (discardConn) SetReadDeadline(time.Time) error  { return nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

func fuzzRelay(data []byte, writeApproval bool) *relay {
	cfg := relayConfig{
		policy:      sqlpolicy.Grant{Statements: "read", Role: "r"},
		classify:    testClassify,
		identity:    "SET @sigil_identity = 'a/human/s'",
		emit:        func(*audit.Event) {},
		checkDBName: func(context.Context, string) error { return nil },
		findKill:    func(id uint64) *killEntry { return &killEntry{threadID: uint32(id)} },
	}
	if writeApproval {
		cfg.policy = sqlpolicy.Grant{Statements: "admin", Role: "r", WriteApproval: true}
		cfg.awaitTimeout = time.Millisecond
		cfg.approve = func(_ context.Context, _, fp, _ string) (string, string, error) {
			if fp[0] < '8' {
				return "a", "b", nil
			}
			return "", "", errors.New("pending")
		}
	}
	return newRelay(cfg, bufio.NewReaderSize(bytes.NewReader(data), clientBufferSize), discardConn{}, discardConn{})
}

// FuzzClientPackets feeds arbitrary client bytes to the command loop and
// arbitrary server bytes to the tap: neither may panic or hang.
func FuzzClientPackets(f *testing.F) {
	f.Add(appendPacket(nil, 0, query("select 1")), []byte{})
	f.Add(appendPacket(nil, 0, append([]byte{comStmtPrepare}, "select ?"...)), appendPacket(nil, 1, []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}))
	f.Add(appendPacket(appendPacket(nil, 0, append([]byte{comStmtPrepare}, "select ?, ?"...)), 0,
		[]byte{comStmtExecute, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, typeLong, 0, typeVarString, 0, 1, 2, 3, 4, 3, 'a', 'b', 'c'}),
		appendPacket(nil, 1, []byte{0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0}))
	f.Add(appendPacket(nil, 0, []byte{comResetConnection}), appendPacket(appendPacket(nil, 1, []byte{0, 0, 0}), 1, []byte{0xff, 1, 2}))
	f.Add(appendPacket(nil, 0, query("kill query 5")), []byte{0xff, 0xff, 0xff, 1})
	f.Add(appendPacket(nil, 0, []byte{comProcessKill, 1}), []byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0, comQuery}, []byte{})
	f.Fuzz(func(t *testing.T, client, server []byte) {
		for _, writeApproval := range []bool{false, true} {
			r := fuzzRelay(client, writeApproval)
			r.expect = []expectation{{kind: expectPrepare, approval: writeApproval, sql: "insert ?"}, {kind: expectSwallow}}
			_ = r.tap(server)
			_ = r.clientLoop(context.Background())
			_ = r.tap(server)
		}
		st := &stmt{numParams: 3}
		_, _, _ = executeValues(client, st)
		_ = decodeExecuteParams(client, st, len(client))
		_, _ = parseHandshakeResponse(client)
		_, _ = parseServerHandshake(server)
	})
}
