package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigilhq/sigil/api/client"
)

func myPacket(seq byte, payload []byte) []byte {
	n := len(payload)
	return append([]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}, payload...)
}

// myGreeting is a minimal v10 handshake with the given lower capabilities.
func myGreeting(caps uint16) []byte {
	p := append([]byte{10}, "11.4.0-sigil\x00"...)
	p = binary.LittleEndian.AppendUint32(p, 7)
	p = append(p, "abcdefgh\x00"...)
	return binary.LittleEndian.AppendUint16(p, caps)
}

// fakeClient puts a program called name in a fresh PATH that records its
// arguments and prints versionOut for --version.
func fakeClient(t *testing.T, name, versionOut string) (argsFile string) {
	t.Helper()
	bin := t.TempDir()
	argsFile = filepath.Join(t.TempDir(), "args")
	script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '" + versionOut + "'; exit 0; fi\n" +
		"for a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\necho " + name + " ran\n"
	if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	return argsFile
}

func TestDBConnectMySQL(t *testing.T) {
	home, auth, db, g := dbSetup(t)
	// A wildcard listener is reached on the gateway's host.
	auth.setMySQLAddr("0.0.0.0:3036")
	argsFile := fakeClient(t, "mariadb", "mariadb  Ver 15.1 Distrib 10.11.14-MariaDB")
	r := runWith(t, nil, "", "db", "connect", "my1", "--db-user", "reader", "--db-name", "app", "--", "-e", "select name from items")
	if r.code != 0 || r.stdout != "mariadb ran\n" {
		t.Fatalf("connect: %+v", r)
	}
	dir := filepath.Join(client.ProfileDir(home, g.addr), "db", "my1")
	host, _, _ := net.SplitHostPort(g.addr)
	want := strings.Join([]string{"--host=" + host, "--port=3036", "--protocol=TCP", "--user=reader",
		"--ssl-cert=" + filepath.Join(dir, "tls.crt"), "--ssl-key=" + filepath.Join(dir, "tls.key"), "--ssl-ca=" + filepath.Join(dir, "ca.crt"),
		"--ssl-verify-server-cert", "--database=app", "-e", "select name from items"}, "\n") + "\n"
	if args, _ := os.ReadFile(argsFile); string(args) != want {
		t.Fatalf("mariadb args:\n%s\nwant:\n%s", args, want)
	}
	// The login is reused.
	r = runWith(t, nil, "", "db", "connect", "my1")
	if r.code != 0 || len(db.requests()) != 1 {
		t.Fatalf("second connect: %+v, %d requests", r, len(db.requests()))
	}

	// Oracle's mysql spells verification differently; Debian's mysql is
	// MariaDB's.
	for _, tc := range []struct{ version, verify string }{
		{"mysql  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)", "--ssl-mode=VERIFY_IDENTITY"},
		{"mysql  Ver 15.1 Distrib 10.11.14-MariaDB, for debian-linux-gnu", "--ssl-verify-server-cert"},
	} {
		argsFile = fakeClient(t, "mysql", tc.version)
		r = runWith(t, nil, "", "db", "connect", "my1")
		args, _ := os.ReadFile(argsFile)
		if r.code != 0 || r.stdout != "mysql ran\n" || !strings.Contains(string(args), "\n"+tc.verify+"\n--database=app\n") {
			t.Fatalf("%s: %+v\n%s", tc.version, r, args)
		}
	}
	t.Setenv("PATH", t.TempDir())
	r = runWith(t, nil, "", "db", "connect", "my1")
	if r.code != 1 || !strings.Contains(r.stderr, "neither mariadb nor mysql found") || !strings.Contains(r.stderr, "apt install mariadb-client") {
		t.Fatalf("no client: %+v", r)
	}
}

func TestDBLoginAndEnvMySQL(t *testing.T) {
	home, auth, _, g := dbSetup(t)
	r := runWith(t, nil, "", "db", "login", "my1")
	if r.code != 1 || !strings.Contains(r.stderr, "has no MySQL listener; ask an admin to set mysql_listen") {
		t.Fatalf("no listener: %+v", r)
	}
	auth.setMySQLAddr("localhost:13036")
	r = runWith(t, nil, "", "db", "login", "my1")
	if r.code != 0 || !strings.Contains(r.stdout, `eval "$(sigil db env my1)" && mariadb`) || !strings.Contains(r.stdout, "--defaults-extra-file=") {
		t.Fatalf("login: %+v", r)
	}
	dir := filepath.Join(client.ProfileDir(home, g.addr), "db", "my1")
	cnf, err := os.ReadFile(filepath.Join(dir, "my.cnf"))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`[client-mariadb]
host=localhost
port=13036
protocol=TCP
user=reader
ssl-cert=%s
ssl-key=%s
ssl-ca=%s
ssl-verify-server-cert
[mariadb-client]
database=app
`, filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt"))
	if _, body, _ := strings.Cut(string(cnf), "[client-mariadb]\n"); "[client-mariadb]\n"+body != want {
		t.Fatalf("my.cnf:\n%s\nwant:\n%s", cnf, want)
	}
	if st, _ := os.Stat(filepath.Join(dir, "my.cnf")); st.Mode().Perm() != 0o600 {
		t.Fatalf("my.cnf mode %v", st.Mode())
	}

	r = runWith(t, nil, "", "db", "env", "my1")
	wantEnv := fmt.Sprintf("export MYSQL_HOME=%s\nexport MARIADB_HOME=%s\nexport MYSQL_HOST=localhost\nexport MYSQL_TCP_PORT=13036\n", shellQuote(dir), shellQuote(dir))
	if r.code != 0 || r.stdout != wantEnv {
		t.Fatalf("env: %+v\nwant:\n%s", r, wantEnv)
	}
	r = runWith(t, nil, "", "db", "env", "my1", "--format", "json")
	var env map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &env); err != nil || env["MYSQL_HOME"] != dir || env["MYSQL_TCP_PORT"] != "13036" {
		t.Fatalf("env json: %+v", r)
	}
}

func TestMyCnfQuote(t *testing.T) {
	for in, want := range map[string]string{
		"reader":        "reader",
		"":              `""`,
		"/a b/c.crt":    `"/a b/c.crt"`,
		`we"ird\#name`:  `"we\"ird\\#name"`,
		"semi;colon":    `"semi;colon"`,
		"plain/path.pm": "plain/path.pm",
	} {
		if got, err := myCnfQuote(in); err != nil || got != want {
			t.Errorf("myCnfQuote(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := myCnfQuote("a\nssl-ca=/evil"); err == nil {
		t.Error("a line break was accepted")
	}
}

func TestMySQLAddrFor(t *testing.T) {
	for _, tc := range []struct{ proxy, adv, want, err string }{
		{"gw.example.com:3080", "gw.example.com:3036", "gw.example.com:3036", ""},
		{"gw.example.com:3080", "0.0.0.0:3036", "gw.example.com:3036", ""},
		{"gw.example.com:3080", "[::]:3036", "gw.example.com:3036", ""},
		{"gw.example.com:3080", ":3036", "gw.example.com:3036", ""},
		{"127.0.0.1:3080", "127.0.0.2:3306", "127.0.0.2:3306", ""},
		{"gw:3080", "", "", "has no MySQL listener"},
		{"gw:3080", "nonsense", "", "not HOST:PORT"},
	} {
		got, err := mysqlAddrFor(tc.proxy, tc.adv)
		if got != tc.want || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("mysqlAddrFor(%q, %q) = %q, %v", tc.proxy, tc.adv, got, err)
		}
	}
}

func TestProxyDBTunnelMySQL(t *testing.T) {
	_, _, db, _ := dbSetup(t)
	var out, errb lockedBuffer
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, openTerminal: func() (terminal, error) { return nil, errNoTerminal }, now: time.Now}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- a.run(ctx, []string{"proxy", "db", "my1", "--tunnel", "--db-user", "reader", "--db-name", "app"})
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("proxy exit %d: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("proxy did not stop")
		}
	}()
	var addr string
	waitFor(t, "the listening line", func() bool {
		s := out.String()
		i := strings.Index(s, "listening on ")
		if i < 0 {
			return false
		}
		addr = strings.TrimSpace(strings.SplitN(s[i+len("listening on "):], "\n", 2)[0])
		return true
	})
	_, port, _ := net.SplitHostPort(addr)
	for _, want := range []string{"mariadb -h 127.0.0.1 -P " + port + " -u reader --skip-ssl app", "reader@tcp(" + addr + ")/app"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	greeting := make([]byte, len(myPacket(0, myGreeting(0))))
	if _, err := io.ReadFull(r, greeting); err != nil {
		t.Fatal(err)
	}
	if want := myPacket(0, myGreeting(0xffff&^(1<<11))); string(greeting) != string(want) {
		t.Fatalf("greeting %x, want %x (CLIENT_SSL cleared)", greeting, want)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != "CN=my1/reader/app#1\n" {
		t.Fatalf("gateway saw %q, %v", line, err)
	}
	c.Write([]byte("ping\n"))
	if line, err = r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
	if reqs := db.requests(); len(reqs) != 1 || reqs[0].GetDatabase() != "my1" {
		t.Fatalf("requests %v", reqs)
	}
}
