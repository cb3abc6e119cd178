package sqlpolicy

import "strings"

// deniedMySQLFuncs are MySQL/MariaDB built-in functions, and the common
// UDFs, with side effects. A statement calling one takes the function's
// class even inside a SELECT, DO or SET value. Names are matched on the
// function name only, whatever the schema, which errs on the safe side.
//
// SLEEP and BENCHMARK are deliberately absent (read): they only consume
// time and CPU on the caller's own connection, which the gateway's idle and
// statement limits bound; refusing them would break health checks.
//
// Stored functions a user declares may write too (MySQL allows data
// changes in functions that are not DETERMINISTIC), as may triggers; the
// database account the identity maps to must itself be read-only for a hard
// guarantee.
var deniedMySQLFuncs = map[string]funcRule{
	// Named locks are session state visible to every other session.
	"get_lock":          {ClassWrite, "takes a named lock"},
	"release_lock":      {ClassWrite, "releases a named lock"},
	"release_all_locks": {ClassWrite, "releases named locks"},
	// Sequences (MariaDB, TiDB): NEXT VALUE FOR parses to nextval.
	"nextval": {ClassWrite, "advances a sequence"},
	"setval":  {ClassWrite, "sets a sequence"},
	// The locking service.
	"service_get_read_locks":  {ClassWrite, "takes a locking-service lock"},
	"service_get_write_locks": {ClassWrite, "takes a locking-service lock"},
	"service_release_locks":   {ClassWrite, "releases locking-service locks"},

	// The server's file system.
	"load_file": {ClassAdmin, "reads a file on the database server"},

	// lib_mysqludf_sys and similar UDFs run operating-system commands or
	// reach the network; they are not built in, so what a function of that
	// name does on a given server is not known.
	"sys_exec":  {ClassUnknown, "runs an operating-system command (UDF)"},
	"sys_eval":  {ClassUnknown, "runs an operating-system command (UDF)"},
	"sys_get":   {ClassUnknown, "reads the server environment (UDF)"},
	"sys_set":   {ClassUnknown, "sets the server environment (UDF)"},
	"http_get":  {ClassUnknown, "makes an HTTP request from the server (UDF)"},
	"http_post": {ClassUnknown, "makes an HTTP request from the server (UDF)"},
	"http_put":  {ClassUnknown, "makes an HTTP request from the server (UDF)"},
	"http_delete": {ClassUnknown,
		"makes an HTTP request from the server (UDF)"},
}

// deniedMySQLFuncPrefixes cover families of plugin functions that change
// server state.
var deniedMySQLFuncPrefixes = []struct {
	prefix string
	rule   funcRule
}{
	{"audit_log_", funcRule{ClassAdmin, "changes audit logging"}},
	{"keyring_", funcRule{ClassAdmin, "changes the keyring"}},
	{"version_tokens_", funcRule{ClassAdmin, "changes version tokens"}},
	{"mysql_firewall_", funcRule{ClassAdmin, "changes the firewall"}},
	{"set_firewall_", funcRule{ClassAdmin, "changes the firewall"}},
	{"group_replication_", funcRule{ClassAdmin, "controls group replication"}},
	{"asynchronous_connection_failover_", funcRule{ClassAdmin, "controls replication failover"}},
	{"lib_mysqludf_", funcRule{ClassUnknown, "is an operating-system UDF"}},
}

// lookupMySQLFunc returns the rule for a function name.
func lookupMySQLFunc(name string) (funcRule, bool) {
	name = strings.ToLower(name)
	if r, ok := deniedMySQLFuncs[name]; ok {
		return r, true
	}
	for _, p := range deniedMySQLFuncPrefixes {
		if strings.HasPrefix(name, p.prefix) {
			return p.rule, true
		}
	}
	return funcRule{}, false
}
