package apiserver

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
)

func toProto(r types.Resource) (*sigilv1.Resource, error) {
	data, err := types.MarshalResource(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &sigilv1.Resource{Kind: r.GetKind(), Name: r.GetMetadata().Name, Json: data}, nil
}

func checkKind(kind string) error {
	if !types.IsKnownKind(kind) {
		return trace.BadParameter("unknown kind %q; one of %s", kind, strings.Join(types.Kinds(), ", "))
	}
	return nil
}

// resourceChanged records a control-plane change.
func (s *Server) resourceChanged(ctx context.Context, id *certid.Identity, kind, name, action string) error {
	if kind == types.KindToken {
		// Token names are secrets: never put them in the audit log.
		name = "(token)"
	}
	return s.emit(ctx, &audit.Event{
		Type:     audit.EventResourceChanged,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: kind, Name: name},
		Success:  true,
		Details:  map[string]string{"action": action},
	})
}

type resourceService struct{ s *Server }

func (h *resourceService) CreateResource(ctx context.Context, req *connect.Request[sigilv1.CreateResourceRequest]) (*connect.Response[sigilv1.CreateResourceResponse], error) {
	s := h.s
	in := req.Msg.GetResource()
	if in == nil {
		return nil, trace.BadParameter("missing resource")
	}
	if err := checkKind(in.Kind); err != nil {
		return nil, trace.Wrap(err)
	}
	verb := types.VerbCreate
	if req.Msg.Force {
		verb = types.VerbUpdate
	}
	id, err := s.authorize(ctx, in.Kind, verb)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r, err := types.UnmarshalResource(in.Kind, in.Json)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	name := r.GetMetadata().Name
	if r.GetKind() == types.KindRole && types.IsBuiltinRole(name) {
		return nil, trace.BadParameter("role %q is built in and cannot be changed; create a role with another name", name)
	}
	if r.GetKind() == types.KindRole {
		// A role that cannot be evaluated must not be stored.
		if _, err := policy.NewAccessChecker([]*types.Role{r.(*types.Role)}, nil); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if u, ok := r.(*types.User); ok {
		if _, err := s.roles(ctx, u.Spec.Roles); err != nil {
			return nil, trace.Wrap(err)
		}
		if u.Spec.CreatedAt.IsZero() {
			u.Spec.CreatedAt = s.cfg.Clock().UTC()
		}
	}
	// An OIDC client secret is sealed apart from the resource, so that
	// reading connectors back never shows it.
	var clientSecret string
	if types.IsConnectorKind(r.GetKind()) {
		if s.cfg.SSO == nil {
			return nil, trace.NotImplemented("SSO connectors are not supported by this gateway")
		}
		if err := s.cfg.SSO.CheckConnector(ctx, r); err != nil {
			return nil, trace.Wrap(err)
		}
		if c, ok := r.(*types.OIDCConnector); ok {
			clientSecret, c.Spec.ClientSecret = c.Spec.ClientSecret, ""
		}
	}
	created := true
	if req.Msg.Force {
		_, gerr := s.cfg.Resources.Get(ctx, r.GetKind(), name)
		created = trace.IsNotFound(gerr)
		r.GetMetadata().Revision = 0
		_, err = s.cfg.Resources.Upsert(ctx, r)
	} else {
		_, err = s.cfg.Resources.Create(ctx, r)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if types.IsConnectorKind(r.GetKind()) {
		if err := s.cfg.SSO.ConnectorStored(ctx, r, clientSecret); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	action := "created"
	if !created {
		action = "updated"
	}
	if err := s.resourceChanged(ctx, id, r.GetKind(), name, action); err != nil {
		return nil, err
	}
	out, err := toProto(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.CreateResourceResponse{Resource: out, Created: created}), nil
}

func (h *resourceService) GetResource(ctx context.Context, req *connect.Request[sigilv1.GetResourceRequest]) (*connect.Response[sigilv1.GetResourceResponse], error) {
	s := h.s
	if err := checkKind(req.Msg.Kind); err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := s.authorize(ctx, req.Msg.Kind, types.VerbRead); err != nil {
		return nil, trace.Wrap(err)
	}
	var r types.Resource
	if req.Msg.Kind == types.KindRole && types.IsBuiltinRole(req.Msg.Name) {
		roles, err := s.roles(ctx, []string{req.Msg.Name})
		if err != nil {
			return nil, trace.Wrap(err)
		}
		r = roles[0]
	} else {
		var err error
		if r, err = s.cfg.Resources.Get(ctx, req.Msg.Kind, req.Msg.Name); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	out, err := toProto(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.GetResourceResponse{Resource: out}), nil
}

func (h *resourceService) ListResources(ctx context.Context, req *connect.Request[sigilv1.ListResourcesRequest]) (*connect.Response[sigilv1.ListResourcesResponse], error) {
	s := h.s
	if err := checkKind(req.Msg.Kind); err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := s.authorize(ctx, req.Msg.Kind, types.VerbList); err != nil {
		return nil, trace.Wrap(err)
	}
	list, err := s.cfg.Resources.List(ctx, req.Msg.Kind)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if req.Msg.Kind == types.KindRole {
		for _, r := range types.BuiltinRoles() {
			list = append(list, r)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].GetMetadata().Name < list[j].GetMetadata().Name })
	}
	resp := &sigilv1.ListResourcesResponse{}
	for _, r := range list {
		p, err := toProto(r)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		resp.Resources = append(resp.Resources, p)
	}
	return connect.NewResponse(resp), nil
}

func (h *resourceService) DeleteResource(ctx context.Context, req *connect.Request[sigilv1.DeleteResourceRequest]) (*connect.Response[sigilv1.DeleteResourceResponse], error) {
	s := h.s
	kind, name := req.Msg.Kind, req.Msg.Name
	if err := checkKind(kind); err != nil {
		return nil, trace.Wrap(err)
	}
	id, err := s.authorize(ctx, kind, types.VerbDelete)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	switch {
	case kind == types.KindRole && types.IsBuiltinRole(name):
		return nil, trace.BadParameter("role %q is built in and cannot be removed", name)
	case kind == types.KindUser:
		err = s.cfg.Users.Delete(ctx, name)
		if err == nil && s.cfg.MFA != nil {
			// A later user of the same name must not inherit these devices.
			err = s.cfg.MFA.DeleteUser(ctx, name)
		}
	default:
		err = s.cfg.Resources.Delete(ctx, kind, name)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if types.IsConnectorKind(kind) && s.cfg.SSO != nil {
		if err := s.cfg.SSO.ConnectorDeleted(ctx, kind, name); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if err := s.resourceChanged(ctx, id, kind, name, "deleted"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.DeleteResourceResponse{}), nil
}

type userService struct{ s *Server }

// parseTraits turns {"logins": "alice,root"} into {"logins": ["alice", "root"]}.
func parseTraits(in map[string]string) map[string][]string {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string][]string, len(in))
	for k, v := range in {
		var vals []string
		for _, x := range strings.Split(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				vals = append(vals, x)
			}
		}
		out[k] = vals
	}
	return out
}

func (h *userService) AddUser(ctx context.Context, req *connect.Request[sigilv1.AddUserRequest]) (*connect.Response[sigilv1.AddUserResponse], error) {
	s := h.s
	id, err := s.authorize(ctx, types.KindUser, types.VerbCreate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(req.Msg.Roles) == 0 {
		return nil, trace.BadParameter("--roles: a user needs at least one role (see \"sigilctl get role\")")
	}
	if _, err := s.roles(ctx, req.Msg.Roles); err != nil {
		return nil, trace.Wrap(err)
	}
	user, err := types.NewUser(req.Msg.Name, req.Msg.Roles, parseTraits(req.Msg.Traits))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	user, token, _, err := s.cfg.Users.Add(ctx, user)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.resourceChanged(ctx, id, types.KindUser, user.Metadata.Name, "created"); err != nil {
		return nil, err
	}
	out, err := toProto(user)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.AddUserResponse{
		SignupUrl: s.SignupURL(token),
		Token:     token,
		User:      out,
	}), nil
}

// SignupURL is the browser link that completes a signup token.
func (s *Server) SignupURL(token string) string {
	return fmt.Sprintf("https://%s/web/signup/%s", s.cfg.PublicAddr, token)
}

func (h *userService) UpdateUser(ctx context.Context, req *connect.Request[sigilv1.UpdateUserRequest]) (*connect.Response[sigilv1.UpdateUserResponse], error) {
	s := h.s
	id, err := s.authorize(ctx, types.KindUser, types.VerbUpdate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(req.Msg.SetRoles) > 0 {
		if _, err := s.roles(ctx, req.Msg.SetRoles); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	r, err := s.cfg.Resources.Update(ctx, types.KindUser, req.Msg.Name, func(r types.Resource) error {
		u := r.(*types.User)
		if len(req.Msg.SetRoles) > 0 {
			u.Spec.Roles = req.Msg.SetRoles
		}
		for k, v := range parseTraits(req.Msg.SetTraits) {
			if u.Spec.Traits == nil {
				u.Spec.Traits = map[string][]string{}
			}
			if len(v) == 0 {
				delete(u.Spec.Traits, k)
				continue
			}
			u.Spec.Traits[k] = v
		}
		return nil
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.resourceChanged(ctx, id, types.KindUser, req.Msg.Name, "updated"); err != nil {
		return nil, err
	}
	out, err := toProto(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.UpdateUserResponse{User: out}), nil
}

func (h *userService) ResetUser(ctx context.Context, req *connect.Request[sigilv1.ResetUserRequest]) (*connect.Response[sigilv1.ResetUserResponse], error) {
	s := h.s
	id, err := s.authorize(ctx, types.KindUser, types.VerbUpdate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	token, _, err := s.cfg.Users.Reset(ctx, req.Msg.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if s.cfg.MFA != nil {
		// A reset is also how a user who lost their devices gets back in:
		// the signup registers new ones.
		if err := s.cfg.MFA.DeleteUser(ctx, req.Msg.Name); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if err := s.resourceChanged(ctx, id, types.KindUser, req.Msg.Name, "reset"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.ResetUserResponse{SignupUrl: s.SignupURL(token), Token: token}), nil
}

type tokenService struct{ s *Server }

// DefaultTokenTTL is how long a join token works unless told otherwise.
const DefaultTokenTTL = time.Hour

func (h *tokenService) AddToken(ctx context.Context, req *connect.Request[sigilv1.AddTokenRequest]) (*connect.Response[sigilv1.AddTokenResponse], error) {
	s := h.s
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var spec types.TokenSpec
	if self := req.Msg.Kind == types.TokenKindAgent && req.Msg.OnBehalfOf == id.Name; self {
		// "sigil agent token": a person may always make an agent for
		// themself, bounded by their own access.
		if spec, err = h.selfAgentSpec(ctx, id, req.Msg.Name); err != nil {
			return nil, trace.Wrap(err)
		}
	} else {
		if id, err = s.authorize(ctx, types.KindToken, types.VerbCreate); err != nil {
			return nil, trace.Wrap(err)
		}
		if req.Msg.OnBehalfOf != "" {
			if _, err := s.cfg.Users.Get(ctx, req.Msg.OnBehalfOf); trace.IsNotFound(err) {
				return nil, trace.NotFound("--on-behalf-of %q is not a local user; SSO users make tokens for their own agents with \"sigil agent token\"", req.Msg.OnBehalfOf)
			} else if err != nil {
				return nil, trace.Wrap(err)
			}
		}
	}
	if _, err := s.roles(ctx, req.Msg.Roles); err != nil {
		return nil, trace.Wrap(err)
	}
	ttl := time.Duration(req.Msg.TtlSeconds) * time.Second
	if ttl < 0 {
		return nil, trace.BadParameter("--ttl must be positive")
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	secret, err := authn.NewToken()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	exp := s.cfg.Clock().Add(ttl).UTC()
	tok := &types.Token{
		Metadata: types.Metadata{Name: secret, Expires: &exp},
		Spec: types.TokenSpec{
			Kind:             req.Msg.Kind,
			BotName:          req.Msg.Name,
			Roles:            req.Msg.Roles,
			OnBehalfOf:       req.Msg.OnBehalfOf,
			OnBehalfOfRoles:  spec.OnBehalfOfRoles,
			OnBehalfOfTraits: spec.OnBehalfOfTraits,
		},
	}
	if _, err := s.cfg.Resources.Create(ctx, tok); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.resourceChanged(ctx, id, types.KindToken, secret, "created"); err != nil {
		return nil, err
	}
	out, err := toProto(tok)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.AddTokenResponse{Token: secret, Resource: out}), nil
}

// selfAgentSpec checks a person's token for their own agent: made by a
// human, not from an access request, and not taking over someone else's
// agent. The agent may name roles the person lacks (roles written for
// agents, e.g. with write_approval): whatever it does is also checked
// against the person's current access. An SSO user is not stored, so what
// they hold now is recorded as that bound.
func (h *tokenService) selfAgentSpec(ctx context.Context, id *certid.Identity, name string) (types.TokenSpec, error) {
	var spec types.TokenSpec
	if id.Kind != certid.KindHuman {
		return spec, trace.AccessDenied("only people make tokens for their own agents; %q is a %s", id.Name, id.Kind)
	}
	if len(id.AccessRequests) > 0 {
		return spec, trace.AccessDenied("an agent cannot inherit roles from an access request; run \"sigil login\" without --request-id first")
	}
	if h.s.cfg.Bots != nil {
		if b, err := h.s.cfg.Bots.Get(ctx, name); err == nil && b.OnBehalfOf != id.Name {
			return spec, trace.AlreadyExists("%s %q exists and is not yours; pick another name", b.Kind, name)
		}
	}
	if _, err := h.s.cfg.Users.Get(ctx, id.Name); trace.IsNotFound(err) {
		spec.OnBehalfOfRoles, spec.OnBehalfOfTraits = slices.Clone(id.Roles), id.Traits
	} else if err != nil {
		return spec, trace.Wrap(err)
	}
	return spec, nil
}

type lockService struct{ s *Server }

func (h *lockService) AddLock(ctx context.Context, req *connect.Request[sigilv1.AddLockRequest]) (*connect.Response[sigilv1.AddLockResponse], error) {
	s := h.s
	id, err := s.authorize(ctx, types.KindLock, types.VerbCreate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	target := types.LockTarget{User: req.Msg.User, Role: req.Msg.Role, Bot: req.Msg.Bot}
	lock, err := s.cfg.Locks.Add(ctx, target, time.Duration(req.Msg.TtlSeconds)*time.Second, req.Msg.Message, id.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	details := map[string]string{"lock": lock.Metadata.Name, "target": target.String()}
	if req.Msg.Message != "" {
		details["message"] = req.Msg.Message
	}
	if err := s.emit(ctx, &audit.Event{
		Type:     audit.EventLockCreated,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: types.KindLock, Name: lock.Metadata.Name},
		Success:  true,
		Details:  details,
	}); err != nil {
		return nil, err
	}
	out, err := toProto(lock)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.AddLockResponse{Lock: out}), nil
}

func (h *lockService) RemoveLock(ctx context.Context, req *connect.Request[sigilv1.RemoveLockRequest]) (*connect.Response[sigilv1.RemoveLockResponse], error) {
	s := h.s
	id, err := s.authorize(ctx, types.KindLock, types.VerbDelete)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.cfg.Locks.Remove(ctx, req.Msg.Id); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.resourceChanged(ctx, id, types.KindLock, req.Msg.Id, "deleted"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.RemoveLockResponse{}), nil
}
