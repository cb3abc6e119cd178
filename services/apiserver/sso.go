package apiserver

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/sso"
)

type ssoService struct{ s *Server }

func (h *ssoService) sso() (*sso.Service, error) {
	if h.s.cfg.SSO == nil {
		return nil, trace.NotImplemented("SSO logins are not enabled on this gateway")
	}
	return h.s.cfg.SSO, nil
}

func (h *ssoService) ListConnectors(ctx context.Context, _ *connect.Request[sigilv1.ListConnectorsRequest]) (*connect.Response[sigilv1.ListConnectorsResponse], error) {
	svc, err := h.sso()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	list, err := svc.ListConnectors(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.ListConnectorsResponse{}
	for _, c := range list {
		resp.Connectors = append(resp.Connectors, &sigilv1.ConnectorInfo{Name: c.Name, Kind: c.Kind, DisplayName: c.DisplayName})
	}
	return connect.NewResponse(resp), nil
}

func (h *ssoService) CreateSSOLogin(ctx context.Context, req *connect.Request[sigilv1.CreateSSOLoginRequest]) (*connect.Response[sigilv1.CreateSSOLoginResponse], error) {
	svc, err := h.sso()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	// Refuse keys that could never be signed now, not after the user has
	// gone through the provider.
	if _, _, err := parseLoginKeys(m.TlsPublicKey, m.SshPublicKey); err != nil {
		return nil, trace.Wrap(err)
	}
	if m.TtlSeconds < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	b, err := svc.Begin(ctx, sso.BeginRequest{
		Connector:         m.Connector,
		TLSPublicKey:      m.TlsPublicKey,
		SSHPublicKey:      m.SshPublicKey,
		TTL:               time.Duration(m.TtlSeconds) * time.Second,
		ClientCallbackURL: m.ClientCallbackUrl,
		SecretHash:        m.ClientSecretHash,
		ClientAddr:        req.Peer().Addr,
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.CreateSSOLoginResponse{
		RequestId: b.ID,
		AuthUrl:   b.AuthURL,
		Expires:   timestamppb.New(b.Expires),
	}), nil
}

func (h *ssoService) GetSSOLoginResult(ctx context.Context, req *connect.Request[sigilv1.GetSSOLoginResultRequest]) (*connect.Response[sigilv1.GetSSOLoginResultResponse], error) {
	svc, err := h.sso()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	res, err := svc.Result(ctx, req.Msg.RequestId, req.Msg.ClientSecret)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.GetSSOLoginResultResponse{
		Pending:   res.Pending,
		Login:     res.Login,
		Connector: res.Connector,
	}), nil
}

// FinishSSOLogin issues certificates for a user an identity provider
// vouched for. SSO users are not stored: they exist for as long as their
// certificate, with the roles and traits of this login, so a change of
// groups at the provider shows at the next login. Locks still reach them,
// by name.
func (s *Server) FinishSSOLogin(ctx context.Context, login *sso.Login) (*sigilv1.LoginResponse, error) {
	// A local account's name is not the provider's to take: it would
	// share that user's locks, requests and audit trail.
	if _, err := s.cfg.Users.Get(ctx, login.Name); err == nil {
		return nil, trace.AccessDenied("user %q exists as a local Sigil user, so an SSO login cannot use that name; log in with --auth local, or ask an admin to remove the local user", login.Name)
	} else if !trace.IsNotFound(err) {
		return nil, trace.Wrap(err)
	}
	roles, missing, err := s.existingRoles(ctx, login.Roles)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(roles) == 0 {
		return nil, trace.AccessDenied("connector %q maps you to roles %v, none of which exist; ask an admin to create them (sigilctl create -f role.yaml) or to fix the connector's rules", login.Connector, missing)
	}
	if len(missing) > 0 {
		s.cfg.Logger.WarnContext(ctx, "An SSO login was mapped to roles that do not exist; they were left out.", "connector", login.Connector, "user", login.Name, "missing", missing)
	}
	var g loginGrant
	g.id = &certid.Identity{
		Name:     login.Name,
		Kind:     certid.KindHuman,
		Roles:    roles,
		Traits:   login.Traits,
		ClientIP: peerAddr(login.ClientAddr),
	}
	if len(login.TLSPublicKey) > 0 {
		if g.tlsPub, g.sshPub, err = parseLoginKeys(login.TLSPublicKey, login.SSHPublicKey); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	g.ttlSeconds = int64(login.TTL / time.Second)
	g.clientAddr = login.ClientAddr
	g.details = map[string]string{"method": login.Method, "connector": login.Connector}
	if g.tlsPub == nil {
		g.details["web"] = "true"
	}
	if len(missing) > 0 {
		g.details["missing_roles"] = joinMax(missing, 1024)
	}
	return s.issueLogin(ctx, g)
}

// existingRoles splits role names into those that exist (built-in or
// stored) and those that do not.
func (s *Server) existingRoles(ctx context.Context, names []string) (have, missing []string, err error) {
	for _, name := range names {
		if types.IsBuiltinRole(name) {
			have = append(have, name)
			continue
		}
		_, err := s.cfg.Resources.Get(ctx, types.KindRole, name)
		switch {
		case err == nil:
			have = append(have, name)
		case trace.IsNotFound(err):
			missing = append(missing, name)
		default:
			return nil, nil, trace.Wrap(err)
		}
	}
	return have, missing, nil
}

func joinMax(list []string, n int) string {
	out := ""
	for i, s := range list {
		if i > 0 {
			out += ","
		}
		out += s
		if len(out) > n {
			return out[:n] + "..."
		}
	}
	return out
}
