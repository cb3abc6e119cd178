package integration

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// requestRoles let pg-read users ask for pg-write for up to a minute, and
// reviewers approve it.
const requestRoles = `kind: role
version: v1
metadata: {name: pg-requester}
spec:
  allow:
    request: {roles: [pg-write], max_duration: 1m, approvals: 1}
---
kind: role
version: v1
metadata: {name: pg-reviewer}
spec:
  allow:
    review_requests: {roles: [pg-write]}
`

// TestAccessRequests: alice (read role) is refused an INSERT; requests
// pg-write; bob approves; alice's new session INSERTs; the audit names
// alice, the request and bob; when the request expires the live session is
// cut and a new one refused. Self-approval and approval after expiry are
// refused. Everything through the real binaries and a real PostgreSQL.
func TestAccessRequests(t *testing.T) {
	// Most of its minute is waiting for requests to expire: let other
	// parallel tests use the machine meanwhile.
	t.Parallel()
	e := startPgEnv(t)
	e.createYAML(requestRoles)
	aliceHome := e.addUser("alice", "pg-read,pg-requester")
	bobHome := e.addUser("bob", "pg-reviewer")
	sigil := func(home string, args ...string) testenv.Result {
		t.Helper()
		return testenv.Run(t, []string{"SIGIL_HOME=" + home}, "", "sigil", args...)
	}
	mustSigil := func(home string, args ...string) testenv.Result {
		t.Helper()
		r := sigil(home, args...)
		if r.ExitCode != 0 {
			t.Fatalf("sigil %s: exit %d\n%s%s", strings.Join(args, " "), r.ExitCode, r.Stdout, r.Stderr)
		}
		return r
	}

	// Read role: INSERT refused at the gateway, and no writer db user.
	reader := e.dbCert(aliceHome, "reader", 0)
	if _, stderr, ok := e.psql(reader, "reader", "INSERT INTO items VALUES (500, 'x');\n"); ok || !strings.Contains(stderr, "42501") {
		t.Fatalf("INSERT with a read role: ok=%v %s", ok, stderr)
	}
	if err := e.tryDBCert(aliceHome, "writer"); err == nil || !strings.Contains(err.Error(), `no role allows db user "writer"`) {
		t.Fatalf("writer cert before the request: %v", err)
	}

	// Refusals when asking.
	if r := sigil(aliceHome, "request", "create", "--roles", "admin"); r.ExitCode == 0 || !strings.Contains(r.Stderr, `request for role "admin" denied`) {
		t.Fatalf("requesting admin: %+v", r)
	}
	if r := sigil(aliceHome, "request", "create", "--roles", "pg-write", "--max-duration", "2h"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "exceeds the 1m0s") {
		t.Fatalf("requesting too long: %+v", r)
	}

	created := mustSigil(aliceHome, "request", "create", "--roles", "pg-write", "--reason", "fix ticket 42", "--max-duration", "45s", "--format", "json")
	var req struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(created.Stdout), &req); err != nil || req.ID == "" || req.State != "pending" {
		t.Fatalf("request create output: %v\n%s", err, created.Stdout)
	}

	// Not approved yet: no elevation; the requester cannot approve.
	if r := sigil(aliceHome, "login", "--request-id", req.ID); r.ExitCode == 0 || !strings.Contains(r.Stderr, "still pending") {
		t.Fatalf("login with a pending request: %+v", r)
	}
	if r := sigil(aliceHome, "request", "review", req.ID, "--approve"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "cannot review your own") {
		t.Fatalf("self approval: %+v", r)
	}
	ls := mustSigil(bobHome, "request", "ls", "--state", "pending")
	if !strings.Contains(ls.Stdout, req.ID) || !strings.Contains(ls.Stdout, "fix ticket 42") {
		t.Fatalf("bob's pending list lacks the request:\n%s", ls.Stdout)
	}
	if r := mustSigil(bobHome, "request", "review", req.ID, "--approve", "--reason", "ok"); !strings.Contains(r.Stdout, "is now approved") {
		t.Fatalf("review output: %s", r.Stdout)
	}

	// Elevated login: roles and request id in the profile, cert ends with
	// the request.
	mustSigil(aliceHome, "login", "--request-id", req.ID)
	st := mustSigil(aliceHome, "status", "--format", "json")
	if !strings.Contains(st.Stdout, "pg-write") {
		t.Fatalf("status after --request-id lacks pg-write:\n%s", st.Stdout)
	}
	writer := e.dbCert(aliceHome, "writer", 0)
	if out, stderr, ok := e.psql(writer, "writer", "INSERT INTO items VALUES (500, 'from request');\nSELECT name FROM items WHERE id = 500;\n"); !ok || !strings.Contains(out, "from request") {
		t.Fatalf("INSERT with the approved request: ok=%v %s %s", ok, out, stderr)
	}

	// Audit: the query names alice and the request; the review names bob.
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, ev := range e.events(audit.EventDBQuery, "alice") {
			if strings.Contains(ev.Statement, "INSERT INTO items VALUES (500") && slices.Contains(ev.Identity.GetRequests(), req.ID) {
				return nil
			}
		}
		return errors.New("no db.query event for alice's INSERT carrying the request id")
	})
	reviewed := e.events(audit.EventRequestReviewed, "bob")
	if len(reviewed) != 1 || reviewed[0].Details["request_id"] != req.ID || reviewed[0].Details["decision"] != "approved" || reviewed[0].Details["requester"] != "alice" {
		t.Fatalf("request.reviewed events: %v", reviewed)
	}
	if created := e.events(audit.EventRequestCreated, "alice"); len(created) != 1 || created[0].Details["reason"] != "fix ticket 42" {
		t.Fatalf("request.created events: %v", created)
	}

	// A live session opened with the request ends when it expires.
	ctx := context.Background()
	conn := e.pgx(ctx, writer, "writer")
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err == nil {
			return errors.New("the session is still alive")
		}
		return nil
	})
	// After expiry: a new session with the old routed cert is refused and
	// the request can no longer be reviewed.
	cfg, err := pgx.ParseConfig(e.dsn(writer, "writer"))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		c.Close(ctx)
		t.Fatal("a new session after the request expired was not refused")
	} else if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Fatalf("new session after expiry: %v, want SQLSTATE 28000", err)
	}
	if r := e.ctl("requests", "approve", req.ID); r.ExitCode == 0 || !(strings.Contains(r.Stderr, "expired") || strings.Contains(r.Stderr, "already approved")) {
		t.Fatalf("approving an ended request: %+v", r)
	}
	// The elevated login ended with the request: log in again, ask once
	// more, and let the request expire unreviewed.
	if r := testenv.Run(t, []string{"SIGIL_HOME=" + aliceHome}, alicePassword+"\n", "sigil", "login", "--proxy", e.d.Addr, "--user", "alice", "--ca-file", e.ca, "--password-stdin"); r.ExitCode != 0 {
		t.Fatalf("login again: %s", r.Stderr)
	}
	created2 := mustSigil(aliceHome, "request", "create", "--roles", "pg-write", "--max-duration", "10s", "--format", "json")
	var req2 struct{ ID string }
	if err := json.Unmarshal([]byte(created2.Stdout), &req2); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if r := mustSigil(bobHome, "request", "ls", "--state", "expired"); !strings.Contains(r.Stdout, req2.ID) {
			return errors.New("request not expired yet")
		}
		return nil
	})
	if r := sigil(bobHome, "request", "review", req2.ID, "--approve"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "expired at") {
		t.Fatalf("approval after expiry: %+v", r)
	}
}
