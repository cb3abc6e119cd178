package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// dbMyCnfFile is the MariaDB option file of a MySQL database login, read
// by the mariadb client when $MYSQL_HOME (or $MARIADB_HOME) names its
// directory.
const dbMyCnfFile = "my.cnf"

// fetchMySQLAddr asks the gateway where its MySQL listener is.
func fetchMySQLAddr(ctx context.Context, clt *client.Client, proxy string) (string, error) {
	resp, err := clt.Auth.ClusterInfo(ctx, connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
	if err != nil {
		return "", apiError(err, proxy)
	}
	return mysqlAddrFor(proxy, resp.Msg.GetMysqlAddr())
}

// mysqlAddrFor turns the advertised MySQL listener into an address to
// dial: a wildcard or missing host means "the gateway's own host".
func mysqlAddrFor(proxy, advertised string) (string, error) {
	if advertised == "" {
		return "", trace.NotFound("the gateway %s has no MySQL listener; ask an admin to set mysql_listen", proxy)
	}
	host, port, err := net.SplitHostPort(advertised)
	if err != nil {
		return "", trace.BadParameter("the gateway advertises MySQL address %q, which is not HOST:PORT", advertised)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if host, _, err = net.SplitHostPort(proxy); err != nil {
			return "", trace.BadParameter("gateway address %q is not HOST:PORT", proxy)
		}
	}
	return net.JoinHostPort(host, port), nil
}

// myParams are the connection options of a MySQL database login, in the
// mariadb client's option names.
func myParams(route *dbRoute, files dbFiles) ([][2]string, error) {
	host, port, err := net.SplitHostPort(route.MySQLAddr)
	if err != nil {
		return nil, trace.BadParameter("the login for %s has no MySQL address; run \"sigil db login %s\" again", route.Database, route.Database)
	}
	// protocol=TCP: with host "localhost" the client would otherwise use
	// the local server's Unix socket.
	return [][2]string{
		{"host", host}, {"port", port}, {"protocol", "TCP"}, {"user", route.DBUser},
		{"ssl-cert", files.cert}, {"ssl-key", files.key}, {"ssl-ca", files.ca},
	}, nil
}

// myCnf renders the option file. Connection options go to
// [client-mariadb], which every MariaDB client program reads (and
// Oracle's, which spell TLS verification differently, do not); the
// database only to [mariadb-client], the mariadb shell's own group,
// because mariadb-dump and others reject a "database" option.
func myCnf(route *dbRoute, files dbFiles) ([]byte, error) {
	params, err := myParams(route, files)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by \"sigil db login %s\": database %s through the Sigil gateway %s.\n", route.Database, route.Database, route.Proxy)
	b.WriteString("# Use: MYSQL_HOME=<this directory> mariadb, or mariadb --defaults-extra-file=<this file>.\n[client-mariadb]\n")
	for _, kv := range params {
		v, err := myCnfQuote(kv[1])
		if err != nil {
			return nil, trace.Wrap(err, "option %s", kv[0])
		}
		fmt.Fprintf(&b, "%s=%s\n", kv[0], v)
	}
	b.WriteString("ssl-verify-server-cert\n[mariadb-client]\n")
	name, err := myCnfQuote(route.DBName)
	if err != nil {
		return nil, trace.Wrap(err, "option database")
	}
	fmt.Fprintf(&b, "database=%s\n", name)
	return []byte(b.String()), nil
}

// myCnfQuote quotes an option file value when it holds spaces, quotes,
// backslashes or '#'; a line break cannot be expressed and is refused.
func myCnfQuote(v string) (string, error) {
	if strings.ContainsAny(v, "\r\n\x00") {
		return "", trace.BadParameter("value %q holds a line break", v)
	}
	if v != "" && !strings.ContainsAny(v, " \t#'\"\\;") {
		return v, nil
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `"`, `\"`)
	return `"` + v + `"`, nil
}

// mysqlClient finds the MariaDB shell, or failing that a mysql binary,
// and says whether it speaks MariaDB's options (--ssl-verify-server-cert)
// or Oracle's (--ssl-mode=VERIFY_IDENTITY).
func mysqlClient(database string) (path string, mariadb bool, err error) {
	if path, err := exec.LookPath("mariadb"); err == nil {
		return path, true, nil
	}
	path, err = exec.LookPath("mysql")
	if err != nil {
		return "", false, trace.NotFound("neither mariadb nor mysql found in $PATH; install the client (Debian/Ubuntu: apt install mariadb-client), or use \"sigil db env %s\" with another client", database)
	}
	// Debian's mysql is MariaDB's shell under its old name.
	out, _ := exec.Command(path, "--version").Output()
	return path, strings.Contains(string(out), "MariaDB"), nil
}

// mysqlArgs are the client arguments for a login, explicit so that an
// option file (~/.my.cnf, or $MYSQL_HOME from "sigil db env") cannot
// point the session elsewhere.
func mysqlArgs(route *dbRoute, files dbFiles, mariadb bool) ([]string, error) {
	params, err := myParams(route, files)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	args := make([]string, 0, len(params)+2)
	for _, kv := range params {
		args = append(args, "--"+kv[0]+"="+kv[1])
	}
	if mariadb {
		args = append(args, "--ssl-verify-server-cert")
	} else {
		args = append(args, "--ssl-mode=VERIFY_IDENTITY")
	}
	return append(args, "--database="+route.DBName), nil
}

// mysqlEnv are the variables "sigil db env" prints for a MySQL login.
// TLS options have no environment variables in MariaDB's clients, so
// MYSQL_HOME (MARIADB_HOME where that is set) points them at my.cnf;
// MYSQL_HOST and MYSQL_TCP_PORT serve tools that only read those.
func mysqlEnv(route *dbRoute, files dbFiles) ([][2]string, error) {
	host, port, err := net.SplitHostPort(route.MySQLAddr)
	if err != nil {
		return nil, trace.BadParameter("the login for %s has no MySQL address; run \"sigil db login %s\" again", route.Database, route.Database)
	}
	return [][2]string{
		{"MYSQL_HOME", files.dir}, {"MARIADB_HOME", files.dir},
		{"MYSQL_HOST", host}, {"MYSQL_TCP_PORT", port},
	}, nil
}

// goMySQLDSN is a go-sql-driver DSN for the local tunnel.
func goMySQLDSN(user, addr, name string) string {
	return fmt.Sprintf("%s@tcp(%s)/%s", user, addr, name)
}
