package apiserver

import (
	"context"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/resources"
)

// MFACertTTL is how long a certificate from a per-session MFA check can be
// used to connect; the session it opens lives on (up to max_session_ttl).
const MFACertTTL = time.Minute

// Values of auth.second_factor.
const (
	SecondFactorOff      = "off"
	SecondFactorOTP      = "otp"
	SecondFactorWebAuthn = "webauthn"
	SecondFactorOn       = "on"
)

// Console paths the CLI sends people to.
const (
	// WebMFAPath + challenge id is where a security key approves a challenge.
	WebMFAPath = "/web/mfa/"
	// WebRegisterPath + registration id registers a security key.
	WebRegisterPath = "/web/devices/register/"
)

func checkSecondFactor(v string, svc *mfa.Service) error {
	switch v {
	case "", SecondFactorOff:
		return nil
	case SecondFactorOTP, SecondFactorWebAuthn, SecondFactorOn:
	default:
		return trace.BadParameter("auth.second_factor: %q is not one of off, otp, webauthn, on", v)
	}
	if svc == nil {
		return trace.BadParameter("auth.second_factor: %s needs the MFA service", v)
	}
	if v == SecondFactorWebAuthn && svc.WebAuthn() == nil {
		return trace.BadParameter("auth.second_factor: webauthn needs public_addr to be a DNS name (security keys cannot use an IP address)")
	}
	return nil
}

// SecondFactorAllows says which device types a login's second factor may
// use; both false when none is asked.
func (s *Server) SecondFactorAllows() (totp, webAuthn bool) {
	switch s.cfg.SecondFactor {
	case SecondFactorOTP:
		return true, false
	case SecondFactorWebAuthn:
		return false, true
	case SecondFactorOn:
		return true, true
	}
	return false, false
}

// WebURL is the console URL for path: on the WebAuthn origin when security
// keys are available (browsers only run ceremonies there), else on the
// public address.
func (s *Server) WebURL(path string) string {
	if s.cfg.MFA != nil && s.cfg.MFA.WebAuthn() != nil {
		return s.cfg.MFA.WebAuthn().Origin() + path
	}
	return "https://" + s.cfg.PublicAddr + path
}

// checkLoginSecondFactor runs the second factor of a password login for
// user: a TOTP code, or a login challenge approved with a security key and
// bound to binding (the key the login signs, or a web sign-in). It returns
// the device used, nil when none is asked.
func (s *Server) checkLoginSecondFactor(ctx context.Context, user, otp, challengeID string, binding []byte) (*mfa.Used, error) {
	allowTOTP, allowKey := s.SecondFactorAllows()
	if !allowTOTP && !allowKey {
		return nil, nil
	}
	switch {
	case otp != "" && allowTOTP:
		if err := s.allowCode(user, ""); err != nil {
			return nil, trace.Wrap(err)
		}
		used, err := s.cfg.MFA.CheckTOTP(ctx, user, otp)
		return used, trace.Wrap(err)
	case challengeID != "":
		used, pending, err := s.cfg.MFA.Redeem(ctx, mfa.RedeemRequest{ID: challengeID, User: user, Target: mfa.Target{Kind: mfa.TargetLogin}, Binding: binding})
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if pending {
			return nil, trace.AccessDenied("the login's security key check was not approved yet; approve it in the browser first")
		}
		return used, nil
	case otp != "":
		return nil, trace.AccessDenied("this gateway asks for a security key at login, not a one-time code (auth.second_factor: %s)", s.cfg.SecondFactor)
	case allowTOTP && !allowKey:
		return nil, trace.AccessDenied("this gateway asks for a second factor at login: pass --otp CODE from your authenticator app")
	default:
		return nil, trace.AccessDenied("this gateway asks for a second factor at login: approve it with your security key (sigil login does this for you)")
	}
}

// allowCode throttles one-time code attempts per user (5 a minute by
// default): a six-digit code must not be guessable by retrying, whatever
// the challenge or the call.
func (s *Server) allowCode(user, clientAddr string) error {
	if err := s.cfg.Limiter.Allow("otp:"+user, peerAddr(clientAddr)); err != nil {
		return trace.LimitExceeded("too many one-time code attempts for %q; wait a minute and try again", user)
	}
	return nil
}

type mfaService struct{ s *Server }

func (h *mfaService) svc() (*mfa.Service, error) {
	if h.s.cfg.MFA == nil {
		return nil, trace.NotImplemented("MFA is not enabled on this gateway")
	}
	return h.s.cfg.MFA, nil
}

// human authenticates a person with a login (not routed) certificate or a
// console session: only they have MFA devices.
func (h *mfaService) human(ctx context.Context) (*mfa.Service, *certid.Identity, error) {
	svc, err := h.svc()
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	if id.Kind != certid.KindHuman {
		return nil, nil, trace.AccessDenied("MFA devices belong to people; %s %q has none", id.Kind, id.Name)
	}
	if !id.Route.IsZero() {
		return nil, nil, trace.AccessDenied("a routed certificate cannot manage MFA; use your login certificate")
	}
	return svc, id, nil
}

// callerBinding names the client of the call: the console session, or the
// login certificate (by serial).
func callerBinding(ctx context.Context, id *certid.Identity) []byte {
	if info, _ := ctx.Value(identityKey{}).(*callerInfo); info != nil && info.web {
		return []byte("web:" + info.binding)
	}
	return []byte("cert:" + id.Serial)
}

func deviceProto(d *mfa.Device) *sigilv1.MFADevice {
	out := &sigilv1.MFADevice{Name: d.Name, Type: d.Type, AddedAt: timestamppb.New(d.AddedAt)}
	if !d.LastUsed.IsZero() {
		out.LastUsed = timestamppb.New(d.LastUsed)
	}
	return out
}

func (h *mfaService) ListMFADevices(ctx context.Context, _ *connect.Request[sigilv1.ListMFADevicesRequest]) (*connect.Response[sigilv1.ListMFADevicesResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	devs, err := svc.Devices(ctx, id.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.ListMFADevicesResponse{}
	for _, d := range devs {
		resp.Devices = append(resp.Devices, deviceProto(d))
	}
	return connect.NewResponse(resp), nil
}

func (h *mfaService) BeginMFARegistration(ctx context.Context, req *connect.Request[sigilv1.BeginMFARegistrationRequest]) (*connect.Response[sigilv1.BeginMFARegistrationResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	devs, err := svc.Devices(ctx, id.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	proven := false
	if len(devs) > 0 {
		// A stolen login must not be able to add the thief's device and
		// then pass per-session MFA with it.
		p := m.GetProof()
		switch {
		case p.GetTotpCode() != "":
			if err = h.s.allowCode(id.Name, req.Peer().Addr); err == nil {
				_, err = svc.CheckTOTP(ctx, id.Name, p.GetTotpCode())
			}
		case p.GetChallengeId() != "":
			var pending bool
			_, pending, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: p.GetChallengeId(), User: id.Name, Target: mfa.Target{Kind: mfa.TargetDevice}, Binding: callerBinding(ctx, id)})
			if err == nil && pending {
				err = trace.AccessDenied("the check with your existing security key was not approved yet")
			}
		default:
			err = trace.AccessDenied("you already have an MFA device: adding another needs a check with an existing one (a one-time code, or a security key approval)")
		}
		if err != nil {
			return nil, trace.Wrap(err)
		}
		proven = true
	}
	regID, r, err := svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: id.Name, Name: m.Name, Type: m.Type, Proven: proven})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.BeginMFARegistrationResponse{RegistrationId: regID, Type: r.Type, Expires: timestamppb.New(r.Expires)}
	switch r.Type {
	case mfa.TypeTOTP:
		resp.TotpUrl = r.TOTPURL
		if u, err := url.Parse(r.TOTPURL); err == nil {
			resp.TotpSecret = u.Query().Get("secret")
		}
	case mfa.TypeWebAuthn:
		resp.WebUrl = h.s.WebURL(WebRegisterPath + regID)
	}
	return connect.NewResponse(resp), nil
}

func (h *mfaService) FinishMFARegistration(ctx context.Context, req *connect.Request[sigilv1.FinishMFARegistrationRequest]) (*connect.Response[sigilv1.FinishMFARegistrationResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	d, err := svc.FinishRegistration(ctx, id.Name, req.Msg.RegistrationId, req.Msg.TotpCode, req.Msg.WebauthnResponse)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := h.s.deviceChanged(ctx, id, d, "added"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.FinishMFARegistrationResponse{Device: deviceProto(d)}), nil
}

// deviceChanged records an added or removed MFA device.
func (s *Server) deviceChanged(ctx context.Context, id *certid.Identity, d *mfa.Device, action string) error {
	return s.emit(ctx, &audit.Event{
		Type:     audit.EventResourceChanged,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: "mfa_device", Name: d.Name},
		Success:  true,
		Details:  map[string]string{"action": action, "device_type": d.Type},
	})
}

func (h *mfaService) GetMFARegistration(ctx context.Context, req *connect.Request[sigilv1.GetMFARegistrationRequest]) (*connect.Response[sigilv1.GetMFARegistrationResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r, err := svc.Registration(ctx, id.Name, req.Msg.RegistrationId)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.GetMFARegistrationResponse{Done: r.Done()}
	if r.Done() {
		resp.Device = &sigilv1.MFADevice{Name: r.Name, Type: r.Type}
	}
	return connect.NewResponse(resp), nil
}

func (h *mfaService) RemoveMFADevice(ctx context.Context, req *connect.Request[sigilv1.RemoveMFADeviceRequest]) (*connect.Response[sigilv1.RemoveMFADeviceResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	d, err := svc.RemoveDevice(ctx, id.Name, req.Msg.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := h.s.deviceChanged(ctx, id, d, "removed"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.RemoveMFADeviceResponse{}), nil
}

// sessionMFARole checks that id may reach the database route at all and
// returns the role requiring per-session MFA ("" when none does).
func (s *Server) sessionMFARole(ctx context.Context, id *certid.Identity, database, dbUser, dbName string) (string, error) {
	if !id.Route.IsZero() {
		return "", trace.AccessDenied("a routed certificate cannot issue other certificates; use your login certificate")
	}
	db, err := resources.Get[*types.Database](ctx, s.cfg.Resources, types.KindDatabase, database)
	if err != nil {
		return "", trace.Wrap(err)
	}
	checker, err := s.checkerFor(ctx, id, types.KindDatabase, db.Metadata.Name)
	if err != nil {
		return "", trace.Wrap(err)
	}
	if _, err := checker.CheckDatabase(db, dbUser, dbName); err != nil {
		return "", trace.Wrap(err)
	}
	return checker.SessionMFARole(), nil
}

func (h *mfaService) IsSessionMFARequired(ctx context.Context, req *connect.Request[sigilv1.IsSessionMFARequiredRequest]) (*connect.Response[sigilv1.IsSessionMFARequiredResponse], error) {
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	role, err := h.s.sessionMFARole(ctx, id, req.Msg.Database, req.Msg.DbUser, req.Msg.DbName)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.IsSessionMFARequiredResponse{Required: role != "", Role: role}), nil
}

func (h *mfaService) CreateMFAChallenge(ctx context.Context, req *connect.Request[sigilv1.CreateMFAChallengeRequest]) (*connect.Response[sigilv1.CreateMFAChallengeResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	t := req.Msg.GetTarget()
	cr := mfa.ChallengeRequest{User: id.Name, ClientAddr: id.ClientIP, AllowTOTP: true, AllowWebAuthn: true}
	switch t.GetKind() {
	case mfa.TargetDatabase:
		if _, err := h.s.sessionMFARole(ctx, id, t.Database, t.DbUser, t.DbName); err != nil {
			return nil, trace.Wrap(err)
		}
		if _, err := parseTLSPublicKey(req.Msg.TlsPublicKey); err != nil {
			return nil, trace.Wrap(err)
		}
		cr.Target = mfa.Target{Kind: mfa.TargetDatabase, Database: t.Database, DBUser: t.DbUser, DBName: t.DbName}
		cr.Binding = req.Msg.TlsPublicKey
	case mfa.TargetDevice:
		cr.Target = mfa.Target{Kind: mfa.TargetDevice}
		cr.Binding = callerBinding(ctx, id)
	default:
		return nil, trace.BadParameter("target.kind: %q is not one of db, mfa_device", t.GetKind())
	}
	if p := connectPeer(req.Peer()); p != "" {
		cr.ClientAddr = p
	}
	return h.s.newChallenge(ctx, svc, cr)
}

func connectPeer(p connect.Peer) string { return peerAddr(p.Addr) }

func (s *Server) newChallenge(ctx context.Context, svc *mfa.Service, cr mfa.ChallengeRequest) (*connect.Response[sigilv1.CreateMFAChallengeResponse], error) {
	cid, c, err := svc.CreateChallenge(ctx, cr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.CreateMFAChallengeResponse{ChallengeId: cid, Expires: timestamppb.New(c.Expires), Methods: c.Methods()}
	for _, m := range resp.Methods {
		if m == mfa.TypeWebAuthn {
			resp.WebUrl = s.WebURL(WebMFAPath + cid)
		}
	}
	return connect.NewResponse(resp), nil
}

func (h *mfaService) CompleteDatabaseMFA(ctx context.Context, req *connect.Request[sigilv1.CompleteDatabaseMFARequest]) (*connect.Response[sigilv1.CompleteDatabaseMFAResponse], error) {
	svc, id, err := h.human(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	if strings.TrimSpace(m.TotpCode) != "" {
		if err := h.s.allowCode(id.Name, req.Peer().Addr); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	used, pending, err := svc.Redeem(ctx, mfa.RedeemRequest{
		ID:       m.ChallengeId,
		User:     id.Name,
		Target:   mfa.Target{Kind: mfa.TargetDatabase, Database: m.Database, DBUser: m.DbUser, DBName: m.DbName},
		Binding:  m.TlsPublicKey,
		TOTPCode: strings.TrimSpace(m.TotpCode),
	})
	if err != nil {
		h.s.mfaFailed(ctx, id, m, err)
		return nil, trace.Wrap(err)
	}
	if pending {
		return connect.NewResponse(&sigilv1.CompleteDatabaseMFAResponse{Pending: true}), nil
	}
	cert, err := h.s.signDatabaseCert(ctx, id, &sigilv1.GenerateDatabaseCertRequest{
		Database: m.Database, DbUser: m.DbUser, DbName: m.DbName, TlsPublicKey: m.TlsPublicKey,
	}, &sessionMFA{device: used.Name, deviceType: used.Type})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.CompleteDatabaseMFAResponse{Cert: cert, MfaDevice: used.Name}), nil
}

// mfaFailed records a refused per-session MFA check.
func (s *Server) mfaFailed(ctx context.Context, id *certid.Identity, m *sigilv1.CompleteDatabaseMFARequest, refusal error) {
	_ = s.emit(ctx, &audit.Event{
		Type:     audit.EventMFAVerified,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: types.KindDatabase, Name: m.Database, DbUser: m.DbUser, DbName: m.DbName},
		Success:  false,
		Error:    trace.UserMessage(refusal),
		Details:  map[string]string{"purpose": "session"},
	})
}

func (h *mfaService) CreateLoginChallenge(ctx context.Context, req *connect.Request[sigilv1.CreateLoginChallengeRequest]) (*connect.Response[sigilv1.CreateMFAChallengeResponse], error) {
	svc, err := h.svc()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	if _, err := parseTLSPublicKey(m.TlsPublicKey); err != nil {
		return nil, trace.Wrap(err)
	}
	user, err := h.s.checkPassword(ctx, m.User, m.Password, req.Peer().Addr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	allowTOTP, allowKey := h.s.SecondFactorAllows()
	if !allowKey {
		return nil, trace.BadParameter("this gateway does not take a security key at login (auth.second_factor: %s)", h.s.cfg.SecondFactor)
	}
	return h.s.newChallenge(ctx, svc, mfa.ChallengeRequest{
		User: user, Target: mfa.Target{Kind: mfa.TargetLogin}, Binding: m.TlsPublicKey,
		ClientAddr: peerAddr(req.Peer().Addr), AllowTOTP: allowTOTP, AllowWebAuthn: true,
	})
}

// checkPassword rate-limits and checks a password the way Login does,
// recording a failure; it returns the user's name.
func (s *Server) checkPassword(ctx context.Context, name, password, clientAddr string) (string, error) {
	limitUser := name
	if types.ValidateName("user", name) != nil {
		limitUser = ""
	}
	if err := s.cfg.Limiter.Allow(limitUser, peerAddr(clientAddr)); err != nil {
		return "", trace.Wrap(err)
	}
	user, err := s.cfg.Users.Authenticate(ctx, name, []byte(password), "")
	if err != nil {
		_ = s.emit(ctx, &audit.Event{
			Type:       audit.EventUserLogin,
			Identity:   &audit.Identity{User: limitUser, Kind: string(certid.KindHuman)},
			ClientAddr: clientAddr,
			Error:      trace.UserMessage(err),
		})
		return "", trace.Wrap(err)
	}
	return user.Metadata.Name, nil
}

func (h *mfaService) GetMFAChallenge(ctx context.Context, req *connect.Request[sigilv1.GetMFAChallengeRequest]) (*connect.Response[sigilv1.GetMFAChallengeResponse], error) {
	svc, err := h.svc()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	c, err := svc.Challenge(ctx, req.Msg.ChallengeId)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.GetMFAChallengeResponse{Approved: !c.Pending(), Expires: timestamppb.New(c.Expires)}), nil
}
