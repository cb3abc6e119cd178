package sqlpolicy

import (
	"regexp"
	"strings"
	"testing"
)

func mustFingerprint(t *testing.T, d Dialect, text string, params [][]byte) string {
	t.Helper()
	fp, err := Fingerprint(d, text, params)
	if err != nil {
		t.Fatalf("Fingerprint(%s, %q): %v", d, text, err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(fp) {
		t.Fatalf("Fingerprint(%s, %q) = %q, want 64 hex digits", d, text, fp)
	}
	return fp
}

func TestFingerprint(t *testing.T) {
	tests := []struct {
		name    string
		dialect Dialect
		same    []string
		differ  []string
	}{
		{
			name:    "postgres",
			dialect: DialectPostgres,
			same: []string{
				"INSERT INTO items VALUES (1, 'a')",
				"insert   into items\n values (1,'a')",
				"/* agent */ INSERT INTO items VALUES (1, 'a') -- because",
				"INSERT INTO ITEMS VALUES (1, 'a');",
				"INSERT INTO items VALUES (1, $$a$$)",
			},
			differ: []string{
				"INSERT INTO items VALUES (2, 'a')",
				"INSERT INTO items VALUES (1, 'b')",
				"INSERT INTO items VALUES (1, 'A')",
				"INSERT INTO other VALUES (1, 'a')",
				`INSERT INTO "ITEMS" VALUES (1, 'a')`,
				"INSERT INTO items VALUES (1, 'a'); DELETE FROM items",
				"INSERT INTO items VALUES (1, 'a') RETURNING id",
				"INSERT INTO items VALUES ($1, 'a')",
				`INSERT INTO items VALUES (1, E'a\\')`,
				"INSERT INTO items VALUES (1, 'a'", // does not parse: raw
			},
		},
		{
			name:    "mysql",
			dialect: DialectMySQL,
			same: []string{
				"DELETE FROM items WHERE id = 1 LIMIT 1",
				"delete   from items where id=1 limit 1",
				"/* agent */ DELETE FROM `items` WHERE `id` = 1 LIMIT 1 -- because",
				"DELETE FROM items # note\n WHERE id = 1 LIMIT 1",
			},
			differ: []string{
				"DELETE FROM items WHERE id = 2 LIMIT 1",
				"DELETE FROM items WHERE id = 1 LIMIT 2",
				"DELETE FROM items WHERE id = 1",
				"DELETE FROM ITEMS WHERE id = 1 LIMIT 1", // table names are case-sensitive on Linux
				"DELETE FROM items WHERE id = '1' LIMIT 1",
				"DELETE FROM items WHERE id = 1 LIMIT 1; DELETE FROM items",
				"DELETE FROM items /*!99999 WHERE id = 1 */ LIMIT 1",
				"DELETE FROM items /*M!999999 WHERE id = 1 */ LIMIT 1",
				"DELETE FROM items WHERE id = _utf8mb4'1' LIMIT 1",
				"DELETE FROM items WHERE id = ? LIMIT 1",
				"DELET FROM items WHERE id = 1 LIMIT 1", // does not parse: raw
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := mustFingerprint(t, tt.dialect, tt.same[0], nil)
			for _, s := range tt.same[1:] {
				if got := mustFingerprint(t, tt.dialect, s, nil); got != want {
					t.Errorf("Fingerprint(%q) != Fingerprint(%q): whitespace, comments and case must not matter", s, tt.same[0])
				}
			}
			seen := map[string]string{want: tt.same[0]}
			for _, s := range tt.differ {
				got := mustFingerprint(t, tt.dialect, s, nil)
				if prev, ok := seen[got]; ok {
					t.Errorf("Fingerprint(%q) == Fingerprint(%q): different statements must differ", s, prev)
				}
				seen[got] = s
				if again := mustFingerprint(t, tt.dialect, s, nil); again != got {
					t.Errorf("Fingerprint(%q) is not deterministic", s)
				}
			}
		})
	}
}

func TestFingerprintParams(t *testing.T) {
	const q = "UPDATE items SET name = $1 WHERE id = $2"
	cases := [][][]byte{
		nil,
		{},
		{[]byte("x"), []byte("1")},
		{[]byte("x"), []byte("2")},
		{[]byte("x1"), []byte("")},
		{[]byte("x"), []byte("1"), nil},
		{nil, []byte("1")},
		{{}, []byte("1")},
		{[]byte("x"), []byte("1"), {}},
	}
	seen := map[string]int{}
	for i, p := range cases {
		fp := mustFingerprint(t, DialectPostgres, q, p)
		if j, ok := seen[fp]; ok && !(len(cases[i]) == 0 && len(cases[j]) == 0) {
			t.Errorf("parameters %q and %q share a fingerprint", cases[j], p)
		}
		seen[fp] = i
	}
	if mustFingerprint(t, DialectPostgres, q, nil) != mustFingerprint(t, DialectPostgres, q, [][]byte{}) {
		t.Error("no parameters as nil and as an empty list differ")
	}
	a := mustFingerprint(t, DialectPostgres, q, [][]byte{[]byte("x"), []byte("1")})
	b := mustFingerprint(t, DialectPostgres, "update items  set name=$1 where id=$2", [][]byte{[]byte("x"), []byte("1")})
	if a != b {
		t.Error("the same statement and parameters formatted differently have different fingerprints")
	}
	if mustFingerprint(t, DialectPostgres, "SELECT 1", nil) == mustFingerprint(t, DialectMySQL, "SELECT 1", nil) {
		t.Error("the dialect is not part of the fingerprint")
	}
	if _, err := Fingerprint("oracle", "SELECT 1", nil); err == nil {
		t.Error("an unknown dialect was accepted")
	}
	if mustFingerprint(t, "", "SELECT 1", nil) != mustFingerprint(t, DialectPostgres, "SELECT 1", nil) {
		t.Error("the empty dialect is not PostgreSQL")
	}
	huge := "SELECT '" + strings.Repeat("x", DefaultMaxStatementBytes) + "'"
	if mustFingerprint(t, DialectPostgres, huge, nil) == mustFingerprint(t, DialectPostgres, huge+" ", nil) {
		t.Error("statements over the parse limit are not hashed as their bytes")
	}
}

func TestGrantNeedsApproval(t *testing.T) {
	read := Result{Class: ClassRead, Reason: "SELECT"}
	write := Result{Class: ClassWrite, Reason: "INSERT into t"}
	adm := Result{Class: ClassAdmin, Reason: "DROP TABLE t"}
	unk := Result{Class: ClassUnknown, Reason: "DO block"}
	tests := []struct {
		grant      Grant
		res        Result
		refused    bool
		needsHuman bool
	}{
		{Grant{Statements: "write", Role: "ops", WriteApproval: true}, read, false, false},
		{Grant{Statements: "write", Role: "ops", WriteApproval: true}, write, false, true},
		{Grant{Statements: "write", Role: "ops", WriteApproval: true}, adm, true, false},
		{Grant{Statements: "admin", Role: "ops", WriteApproval: true}, adm, false, true},
		{Grant{Statements: "admin", Role: "ops", WriteApproval: true}, unk, false, true},
		{Grant{Statements: "read", Role: "ops", WriteApproval: true}, write, true, false},
		{Grant{Statements: "write", Role: "ops"}, write, false, false},
		{Grant{Statements: "admin", Role: "ops"}, unk, false, false},
	}
	for _, tt := range tests {
		msg, ok := tt.grant.Refusal(tt.res)
		if ok == tt.refused || (msg == "") != ok {
			t.Errorf("%+v.Refusal(%s) = %q, %v; want refused=%v", tt.grant, tt.res.Class, msg, ok, tt.refused)
		}
		if got := tt.grant.NeedsApproval(tt.res); got != tt.needsHuman {
			t.Errorf("%+v.NeedsApproval(%s) = %v, want %v", tt.grant, tt.res.Class, got, tt.needsHuman)
		}
	}
}

func FuzzFingerprint(f *testing.F) {
	for _, s := range []string{
		"INSERT INTO t VALUES (1)", "select 1; select 2", "DO $$ BEGIN END $$", "SELEC", "", "/* x */",
		"DELETE FROM t /*!50000 WHERE a=1 */", `SELECT "a\"b"`, "SELECT 'é'", "\xff\xfe", "INSERT INTO t VALUES (_utf8mb4'x')",
	} {
		f.Add(s, []byte("p"), true)
	}
	f.Fuzz(func(t *testing.T, text string, param []byte, withParam bool) {
		var params [][]byte
		if withParam {
			params = [][]byte{param, nil}
		}
		for _, d := range []Dialect{DialectPostgres, DialectMySQL} {
			a, err := Fingerprint(d, text, params)
			if err != nil {
				t.Fatalf("Fingerprint(%s, %q): %v", d, text, err)
			}
			b, err := Fingerprint(d, text, params)
			if err != nil || a != b {
				t.Fatalf("Fingerprint(%s, %q) = %q then %q, %v", d, text, a, b, err)
			}
			if len(a) != 64 {
				t.Fatalf("Fingerprint(%s, %q) = %q", d, text, a)
			}
		}
	})
}
