package apiserver

import (
	"context"
	"strings"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/mfa"
)

// WebLoginRequest is a web console sign-in with a password.
type WebLoginRequest struct {
	User     string
	Password string
	// OTP is the second factor when the user typed a code.
	OTP string
	// Binding names the browser (its pre-sign-in cookie): a security key
	// challenge made for this sign-in is only good in that browser.
	Binding    []byte
	ClientAddr string
}

// WebLoginResult is where a sign-in stands: signed in (Identity), or
// waiting for a security key (ChallengeID, with the options for the
// browser).
type WebLoginResult struct {
	Identity *certid.Identity
	// TTL is how long the console session may live (the roles' limit).
	TTL             time.Duration
	ChallengeID     string
	WebAuthnOptions []byte
	// AllowTOTP says a code may be typed instead of using the key.
	AllowTOTP bool
}

// WebLogin checks a console sign-in as Login does (rate limit, password,
// second factor, locks, roles) and records it. Nothing is signed: the
// console keeps a session for the identity. When a security key is asked
// for and no code was typed, it returns a challenge to approve and finish
// with WebLoginMFA.
func (s *Server) WebLogin(ctx context.Context, req WebLoginRequest) (*WebLoginResult, error) {
	name, err := s.checkPassword(ctx, req.User, req.Password, req.ClientAddr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	allowTOTP, allowKey := s.SecondFactorAllows()
	otp := strings.TrimSpace(req.OTP)
	if allowKey && otp == "" {
		cid, c, err := s.cfg.MFA.CreateChallenge(ctx, mfa.ChallengeRequest{
			User: name, Target: mfa.Target{Kind: mfa.TargetLogin}, Binding: req.Binding,
			ClientAddr: peerAddr(req.ClientAddr), AllowTOTP: allowTOTP, AllowWebAuthn: true,
		})
		if err != nil {
			s.webLoginFailed(ctx, name, req.ClientAddr, err)
			return nil, trace.Wrap(err)
		}
		return &WebLoginResult{ChallengeID: cid, WebAuthnOptions: c.WebAuthnOptions, AllowTOTP: c.AllowTOTP}, nil
	}
	used, err := s.checkLoginSecondFactor(ctx, name, otp, "", req.Binding)
	if err != nil {
		s.webLoginFailed(ctx, name, req.ClientAddr, err)
		return nil, trace.Wrap(err)
	}
	return s.finishWebLogin(ctx, name, req.ClientAddr, used)
}

// WebLoginMFA finishes a sign-in whose security key challenge was
// approved (or solves it with a typed code) in the browser it is bound to.
func (s *Server) WebLoginMFA(ctx context.Context, user, challengeID, otp string, binding []byte, clientAddr string) (*WebLoginResult, error) {
	if s.cfg.MFA == nil {
		return nil, trace.NotImplemented("MFA is not enabled on this gateway")
	}
	if strings.TrimSpace(otp) != "" {
		if err := s.allowCode(user, clientAddr); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	used, pending, err := s.cfg.MFA.Redeem(ctx, mfa.RedeemRequest{
		ID: challengeID, User: user, Target: mfa.Target{Kind: mfa.TargetLogin}, Binding: binding, TOTPCode: strings.TrimSpace(otp),
	})
	if err == nil && pending {
		err = trace.AccessDenied("the security key did not approve the sign-in yet; touch it when the browser asks")
	}
	if err != nil {
		s.webLoginFailed(ctx, user, clientAddr, err)
		return nil, trace.Wrap(err)
	}
	return s.finishWebLogin(ctx, user, clientAddr, used)
}

func (s *Server) webLoginFailed(ctx context.Context, user, clientAddr string, err error) {
	_ = s.emit(ctx, &audit.Event{
		Type:       audit.EventUserLogin,
		Identity:   &audit.Identity{User: user, Kind: string(certid.KindHuman)},
		ClientAddr: clientAddr,
		Error:      trace.UserMessage(err),
		Details:    map[string]string{"method": "local", "web": "true"},
	})
}

func (s *Server) finishWebLogin(ctx context.Context, name, clientAddr string, used *mfa.Used) (*WebLoginResult, error) {
	user, err := s.cfg.Users.Get(ctx, name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id := &certid.Identity{
		Name:     user.Metadata.Name,
		Kind:     certid.KindHuman,
		Roles:    user.Spec.Roles,
		Traits:   user.Spec.Traits,
		ClientIP: peerAddr(clientAddr),
	}
	details := map[string]string{"method": "local", "web": "true"}
	if used != nil {
		details["mfa_device"] = used.Name
	}
	if _, err := s.issueLogin(ctx, loginGrant{id: id, clientAddr: clientAddr, details: details}); err != nil {
		s.webLoginFailed(ctx, name, clientAddr, err)
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &WebLoginResult{Identity: id, TTL: checker.MaxSessionTTL(s.cfg.DefaultTTL)}, nil
}

// SessionMFARole names a role of id that requires per-session MFA ("" when
// none): the console asks for an MFA check before such a user reviews an
// access request.
func (s *Server) SessionMFARole(ctx context.Context, id *certid.Identity) (string, error) {
	checker, err := s.checker(ctx, id)
	if err != nil {
		return "", trace.Wrap(err)
	}
	return checker.SessionMFARole(), nil
}

// ReviewChallenge creates the MFA check a console user whose role requires
// one passes before reviewing access request requestID, bound to their
// console session. With webAuthn false it is for a typed code only.
func (s *Server) ReviewChallenge(ctx context.Context, user, requestID string, binding []byte, clientAddr string, webAuthn bool) (string, *mfa.Challenge, error) {
	if s.cfg.MFA == nil {
		return "", nil, trace.NotImplemented("MFA is not enabled on this gateway")
	}
	id, c, err := s.cfg.MFA.CreateChallenge(ctx, mfa.ChallengeRequest{
		User: user, Target: mfa.Target{Kind: mfa.TargetReview, Request: requestID},
		Binding: binding, ClientAddr: peerAddr(clientAddr), AllowTOTP: true, AllowWebAuthn: webAuthn,
	})
	return id, c, trace.Wrap(err)
}

// ReviewMFA checks a review's MFA: the challenge approved with a security
// key, or a code (then a challenge is made and solved at once).
func (s *Server) ReviewMFA(ctx context.Context, user, requestID, challengeID, otp string, binding []byte, clientAddr string) (*mfa.Used, error) {
	otp = strings.TrimSpace(otp)
	if otp != "" {
		if err := s.allowCode(user, clientAddr); err != nil {
			return nil, trace.Wrap(err)
		}
		if challengeID == "" {
			var err error
			if challengeID, _, err = s.ReviewChallenge(ctx, user, requestID, binding, clientAddr, false); err != nil {
				return nil, trace.Wrap(err)
			}
		}
	}
	used, pending, err := s.cfg.MFA.Redeem(ctx, mfa.RedeemRequest{
		ID: challengeID, User: user, Target: mfa.Target{Kind: mfa.TargetReview, Request: requestID}, Binding: binding, TOTPCode: otp,
	})
	if err == nil && pending {
		err = trace.AccessDenied("the security key did not approve the review yet")
	}
	return used, trace.Wrap(err)
}

// WebSignup completes a signup link in the console and signs the new user
// in: the link is the credential, and a gateway that asks for a second
// factor then has the console register a device at once.
func (s *Server) WebSignup(ctx context.Context, token string, password []byte, clientAddr string) (*WebLoginResult, error) {
	if err := s.cfg.Limiter.Allow("", peerAddr(clientAddr)); err != nil {
		return nil, trace.Wrap(err)
	}
	name, err := s.cfg.Users.Signup(ctx, token, password, clientAddr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return s.finishWebLogin(ctx, name, clientAddr, nil)
}
