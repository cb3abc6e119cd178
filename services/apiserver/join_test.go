package apiserver_test

import (
	"context"
	"crypto/ecdsa"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/bots"
	"github.com/sigilhq/sigil/services/storage/badger"
)

func withBots(t *testing.T) envOption {
	return func(c *apiserver.Config) {
		b, err := badger.New(context.Background(), badger.Config{InMemory: true})
		must(t, err)
		t.Cleanup(func() { b.Close() })
		c.Bots, err = bots.New(bots.Config{Backend: b, Resources: c.Resources, Locks: c.Locks, Users: c.Users, Clock: c.Clock})
		must(t, err)
	}
}

// join exchanges token for a certificate and returns a client using it.
func (e *testEnv) join(token string) (*client.Client, *certid.Identity, error) {
	e.t.Helper()
	key, err := client.GenerateKey()
	must(e.t, err)
	der, err := client.MarshalPublicKeyDER(key)
	must(e.t, err)
	resp, err := e.anon().Join.Join(context.Background(), connect.NewRequest(&sigilv1.JoinRequest{Token: token, TlsPublicKey: der}))
	if err != nil {
		return nil, nil, err
	}
	return e.botClient(resp.Msg, key)
}

func (e *testEnv) botClient(resp *sigilv1.LoginResponse, key *ecdsa.PrivateKey) (*client.Client, *certid.Identity, error) {
	e.t.Helper()
	certs, err := client.ParseCertificatesPEM(resp.TlsCertPem)
	must(e.t, err)
	id, err := certid.FromCertificate(certs[0])
	must(e.t, err)
	return e.newClient(pair(e.t, resp.TlsCertPem, key)), id, nil
}

func (e *testEnv) renew(c *client.Client) (*client.Client, *certid.Identity, error) {
	e.t.Helper()
	key, err := client.GenerateKey()
	must(e.t, err)
	der, err := client.MarshalPublicKeyDER(key)
	must(e.t, err)
	resp, err := c.Join.RenewBotCert(context.Background(), connect.NewRequest(&sigilv1.RenewBotCertRequest{TlsPublicKey: der}))
	if err != nil {
		return nil, nil, err
	}
	return e.botClient(resp.Msg, key)
}

func TestJoinAndRenew(t *testing.T) {
	e := newEnv(t, withBots(t))
	ctx := context.Background()
	admin := e.admin()
	tok, err := admin.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindBot, Name: "ci", Roles: []string{types.RoleAccess}, TtlSeconds: 600,
	}))
	must(t, err)
	ci, id, err := e.join(tok.Msg.Token)
	must(t, err)
	if id.Name != "ci" || id.Kind != certid.KindBot || id.Generation != 1 || time.Until(id.Expires) > apiserver.DefaultBotCertTTL+time.Minute {
		t.Fatalf("joined identity = %+v", id)
	}
	_, _, err = e.join(tok.Msg.Token)
	requireCode(t, err, connect.CodePermissionDenied, "unknown, already used or expired")

	ci2, id2, err := e.renew(ci)
	must(t, err)
	if id2.Generation != 2 {
		t.Fatalf("generation after renewal = %d", id2.Generation)
	}
	if _, err := ci2.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{})); err != nil {
		t.Fatalf("the renewed certificate does not work: %v", err)
	}
	// The old generation presented again: the identity is in two places.
	_, _, err = e.renew(ci)
	requireCode(t, err, connect.CodePermissionDenied, "generation 1 but the latest is 2", "now locked")
	_, err = ci2.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{}))
	requireCode(t, err, connect.CodePermissionDenied, "locked")

	// People renew with "sigil login", not here.
	e.addUser(admin, "alice", []string{types.RoleAccess}, nil)
	_, _, err = e.renew(e.loginClient("alice"))
	requireCode(t, err, connect.CodePermissionDenied, "only bots and agents")

	var joins, failed int
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventJoin {
			if ev.Success {
				joins++
			} else {
				failed++
			}
		}
	}
	if joins != 2 || failed < 2 {
		t.Fatalf("join events: %d ok, %d failed; want 2 ok (join, renew) and the refusals", joins, failed)
	}
	list, err := admin.Join.ListBots(ctx, connect.NewRequest(&sigilv1.ListBotsRequest{}))
	must(t, err)
	if len(list.Msg.Bots) != 1 || list.Msg.Bots[0].Generation != 2 {
		t.Fatalf("ListBots = %v", list.Msg.Bots)
	}
}

// A stolen certificate that has expired renews nothing: the TLS handshake
// refuses it before the generation is even looked at.
func TestExpiredBotCertCannotRenew(t *testing.T) {
	e := newEnv(t, withBots(t))
	ctx := context.Background()
	tok, err := e.admin().Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindAgent, Name: "copilot", Roles: []string{types.RoleAccess}, TtlSeconds: 600,
	}))
	must(t, err)
	agent, _, err := e.join(tok.Msg.Token)
	must(t, err)
	e.clock.Advance(apiserver.DefaultBotCertTTL + time.Minute)
	if _, _, err = e.renew(agent); err == nil {
		t.Fatal("an expired certificate renewed")
	}
	// The client sees the refused handshake as a bad certificate or a
	// broken pipe, depending on timing; what counts is that nothing was
	// renewed.
	list, err := e.admin().Join.ListBots(ctx, connect.NewRequest(&sigilv1.ListBotsRequest{}))
	must(t, err)
	if len(list.Msg.Bots) != 1 || list.Msg.Bots[0].Generation != 1 || list.Msg.Bots[0].Renewed != nil {
		t.Fatalf("after a renewal with an expired certificate: %v", list.Msg.Bots)
	}
}

func TestSelfAgentToken(t *testing.T) {
	e := newEnv(t, withBots(t))
	ctx := context.Background()
	admin := e.admin()
	e.addUser(admin, "alice", []string{types.RoleAccess}, map[string]string{"logins": "alice"})
	e.addUser(admin, "bob", []string{types.RoleAccess}, nil)
	alice := e.loginClient("alice")

	// Anyone may make an agent for themself, no token rule needed...
	tok, err := alice.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindAgent, Name: "copilot", Roles: []string{types.RoleAccess}, OnBehalfOf: "alice",
	}))
	must(t, err)
	// ...but not for someone else, nor a bot.
	_, err = alice.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindAgent, Name: "sneaky", Roles: []string{types.RoleAccess}, OnBehalfOf: "bob",
	}))
	requireCode(t, err, connect.CodePermissionDenied)
	_, err = alice.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindBot, Name: "ci", Roles: []string{types.RoleAccess},
	}))
	requireCode(t, err, connect.CodePermissionDenied)

	agent, id, err := e.join(tok.Msg.Token)
	must(t, err)
	if id.Kind != certid.KindAgent || id.OnBehalfOf != "alice" {
		t.Fatalf("agent identity = %+v", id)
	}
	// Bob cannot take the agent's name; an agent cannot make agents.
	_, err = e.loginClient("bob").Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindAgent, Name: "copilot", Roles: []string{types.RoleAccess}, OnBehalfOf: "bob",
	}))
	requireCode(t, err, connect.CodeAlreadyExists, "is not yours")
	_, err = agent.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindAgent, Name: "child", Roles: []string{types.RoleAccess}, OnBehalfOf: "copilot",
	}))
	requireCode(t, err, connect.CodePermissionDenied)

	// A lock on alice stops her agent too.
	_, err = admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "alice", Message: "away"}))
	must(t, err)
	_, err = agent.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{}))
	requireCode(t, err, connect.CodePermissionDenied, "locked")
}
