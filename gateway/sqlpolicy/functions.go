package sqlpolicy

import "strings"

// funcRule is what calling a deny-listed function costs.
type funcRule struct {
	class Class
	why   string
}

// deniedFuncs are built-in (or common extension) functions with side effects.
// A statement calling one takes the function's class even inside a SELECT.
// Names are matched on the last component only, whatever the schema: a
// user's own `myschema.nextval` is refused too, which errs on the safe side.
//
// This list cannot be complete: any function a user declares may write, as
// may triggers, rules, user-defined operators and casts. The database role
// the identity maps to must itself be read-only for a hard guarantee.
var deniedFuncs = map[string]funcRule{
	// Data changes.
	"nextval":                   {ClassWrite, "advances a sequence"},
	"setval":                    {ClassWrite, "sets a sequence"},
	"pg_notify":                 {ClassWrite, "sends a notification"},
	"lo_create":                 {ClassWrite, "creates a large object"},
	"lo_creat":                  {ClassWrite, "creates a large object"},
	"lo_unlink":                 {ClassWrite, "deletes a large object"},
	"lo_put":                    {ClassWrite, "writes a large object"},
	"lo_from_bytea":             {ClassWrite, "creates a large object"},
	"lowrite":                   {ClassWrite, "writes a large object"},
	"lo_truncate":               {ClassWrite, "truncates a large object"},
	"lo_truncate64":             {ClassWrite, "truncates a large object"},
	"gin_clean_pending_list":    {ClassWrite, "modifies an index"},
	"brin_summarize_new_values": {ClassWrite, "modifies an index"},
	"brin_summarize_range":      {ClassWrite, "modifies an index"},
	"brin_desummarize_range":    {ClassWrite, "modifies an index"},

	// Server state, other sessions, the server's file system, settings.
	"pg_terminate_backend":           {ClassAdmin, "terminates another session"},
	"pg_cancel_backend":              {ClassAdmin, "cancels another session's query"},
	"pg_reload_conf":                 {ClassAdmin, "reloads server configuration"},
	"pg_rotate_logfile":              {ClassAdmin, "rotates the server log"},
	"pg_promote":                     {ClassAdmin, "promotes a standby"},
	"pg_switch_wal":                  {ClassAdmin, "switches WAL files"},
	"pg_backup_start":                {ClassAdmin, "controls backups"},
	"pg_backup_stop":                 {ClassAdmin, "controls backups"},
	"pg_log_backend_memory_contexts": {ClassAdmin, "signals another backend"},
	"pg_log_standby_snapshot":        {ClassAdmin, "writes WAL"},
	"pg_logical_emit_message":        {ClassAdmin, "writes WAL"},
	"pg_import_system_collations":    {ClassAdmin, "creates collations"},
	"pg_drop_replication_slot":       {ClassAdmin, "drops a replication slot"},
	"pg_replication_slot_advance":    {ClassAdmin, "advances a replication slot"},
	"pg_sync_replication_slots":      {ClassAdmin, "changes replication slots"},
	"pg_extension_config_dump":       {ClassAdmin, "changes extension metadata"},
	"pg_stat_statements_reset":       {ClassAdmin, "resets statistics"},
	"pg_stat_file":                   {ClassAdmin, "reads the server's file system"},
	"pg_file_write":                  {ClassAdmin, "writes a server file"},
	"pg_file_rename":                 {ClassAdmin, "renames a server file"},
	"pg_file_unlink":                 {ClassAdmin, "deletes a server file"},
	"pg_file_sync":                   {ClassAdmin, "syncs a server file"},
	"pg_logdir_ls":                   {ClassAdmin, "lists the server log directory"},
	"lo_import":                      {ClassAdmin, "reads a server file into a large object"},
	"lo_export":                      {ClassAdmin, "writes a large object to a server file"},
	// set_config('role', ...) is SET ROLE and set_config('sigil.identity',
	// ...) would forge the identity the database logs; the argument may be
	// any expression, so every call is admin.
	"set_config": {ClassAdmin, "changes a setting, possibly the role"},

	// These run SQL text given as an argument, which the gateway never
	// parses; ts_stat and query_to_xml use read-only SPI, but that still
	// allows nextval() and any user function.
	"query_to_xml":               {ClassUnknown, "executes SQL text given as an argument"},
	"query_to_xmlschema":         {ClassUnknown, "executes SQL text given as an argument"},
	"query_to_xml_and_xmlschema": {ClassUnknown, "executes SQL text given as an argument"},
	"ts_stat":                    {ClassUnknown, "executes SQL text given as an argument"},
}

// deniedFuncPrefixes cover families of functions.
var deniedFuncPrefixes = []struct {
	prefix string
	rule   funcRule
}{
	{"pg_advisory_", funcRule{ClassWrite, "takes or releases an advisory lock"}},
	{"pg_try_advisory_", funcRule{ClassWrite, "takes an advisory lock"}},
	{"dblink", funcRule{ClassAdmin, "runs SQL on another server"}},
	{"pg_read_", funcRule{ClassAdmin, "reads the server's file system"}},
	{"pg_ls_", funcRule{ClassAdmin, "lists the server's file system"}},
	{"pg_create_", funcRule{ClassAdmin, "creates replication slots or restore points"}},
	{"pg_copy_", funcRule{ClassAdmin, "copies a replication slot"}},
	{"pg_logical_slot_", funcRule{ClassAdmin, "consumes a replication slot"}},
	{"pg_replication_origin_", funcRule{ClassAdmin, "changes replication origins"}},
	{"pg_wal_replay_", funcRule{ClassAdmin, "controls WAL replay"}},
	{"pg_stat_reset", funcRule{ClassAdmin, "resets statistics"}},
	{"binary_upgrade_", funcRule{ClassAdmin, "binary-upgrade internals"}},
}

// lookupFunc returns the rule for a function name, lower-cased.
func lookupFunc(name string) (funcRule, bool) {
	name = strings.ToLower(name)
	if r, ok := deniedFuncs[name]; ok {
		return r, true
	}
	for _, p := range deniedFuncPrefixes {
		if strings.HasPrefix(name, p.prefix) {
			return p.rule, true
		}
	}
	return funcRule{}, false
}
