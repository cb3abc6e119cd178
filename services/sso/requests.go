package sso

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/services/storage"
)

// Stages of a login request.
const (
	stageCreated = "created"
	// stageStarted: a browser opened the start page and went to the IdP.
	stageStarted = "started"
	// stageCompleting: a provider answer is being turned into
	// certificates; a second answer is refused.
	stageCompleting = "completing"
	stageDone       = "done"
)

// request is a pending SSO login, stored under requestPrefix+ID until its
// result is fetched or it expires.
type request struct {
	ID            string `json:"id"`
	State         string `json:"state"`
	Stage         string `json:"stage"`
	Connector     string `json:"connector"`
	ConnectorKind string `json:"connector_kind"`
	// Web logins come from the login page, without keys: they end on a
	// gateway page instead of at a CLI.
	Web            bool   `json:"web,omitempty"`
	TLSPublicKey   []byte `json:"tls_public_key,omitempty"`
	SSHPublicKey   []byte `json:"ssh_public_key,omitempty"`
	TTLSeconds     int64  `json:"ttl_seconds,omitempty"`
	ClientCallback string `json:"client_callback,omitempty"`
	SecretHash     []byte `json:"secret_hash,omitempty"`
	ClientAddr     string `json:"client_addr,omitempty"`
	// BrowserHash is the SHA-256 of the cookie set on the browser that
	// opened the start page: the provider's answer must come back
	// through the same browser.
	BrowserHash   []byte    `json:"browser_hash,omitempty"`
	Nonce         string    `json:"nonce,omitempty"`
	PKCEVerifier  string    `json:"pkce_verifier,omitempty"`
	SAMLRequestID string    `json:"saml_request_id,omitempty"`
	Expires       time.Time `json:"expires"`
	// Outcome, once done: Result is a marshalled LoginResponse.
	Result []byte `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`

	revision int64
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", trace.Wrap(err)
	}
	return hex.EncodeToString(b), nil
}

func hashOf(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

// stateKey keeps states out of storage keys in the clear: a storage dump
// must not let anyone answer a pending login.
func stateKey(state string) string {
	return statePrefix + hex.EncodeToString(hashOf([]byte(state)))
}

func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// BeginRequest starts a login.
type BeginRequest struct {
	Connector    string
	TLSPublicKey []byte
	SSHPublicKey []byte
	TTL          time.Duration
	// ClientCallbackURL is the CLI's loopback URL; empty for Web.
	ClientCallbackURL string
	// SecretHash is the SHA-256 of the client's secret; empty for Web.
	SecretHash []byte
	ClientAddr string
	Web        bool
}

// Begun describes a started login.
type Begun struct {
	ID      string
	AuthURL string
	Expires time.Time
}

// Begin stores a new login request for a connector. Keys are not checked
// here: the caller parses them (it signs them later).
func (s *Service) Begin(ctx context.Context, br BeginRequest) (*Begun, error) {
	if err := s.limiter().Allow("", clientIP(br.ClientAddr)); err != nil {
		return nil, trace.Wrap(err)
	}
	c, err := s.connector(ctx, br.Connector)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !br.Web {
		if err := CheckClientCallback(br.ClientCallbackURL); err != nil {
			return nil, trace.Wrap(err)
		}
		if len(br.SecretHash) != sha256.Size {
			return nil, trace.BadParameter("client_secret_hash: want the %d-byte SHA-256 of a random secret", sha256.Size)
		}
		if len(br.TLSPublicKey) == 0 {
			return nil, trace.BadParameter("tls_public_key: missing (PKIX DER public key)")
		}
	}
	if br.TTL < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	id, err := randomHex(16)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	state, err := randomHex(16)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	req := &request{
		ID:             id,
		State:          state,
		Stage:          stageCreated,
		Connector:      c.GetMetadata().Name,
		ConnectorKind:  c.GetKind(),
		Web:            br.Web,
		TLSPublicKey:   br.TLSPublicKey,
		SSHPublicKey:   br.SSHPublicKey,
		TTLSeconds:     int64(br.TTL / time.Second),
		ClientCallback: br.ClientCallbackURL,
		SecretHash:     br.SecretHash,
		ClientAddr:     br.ClientAddr,
		Expires:        s.cfg.Clock().Add(s.cfg.RequestTTL).UTC(),
	}
	if c.GetKind() == types.KindOIDCConnector {
		if req.Nonce, err = randomHex(16); err != nil {
			return nil, trace.Wrap(err)
		}
		req.PKCEVerifier = newVerifier()
	}
	if err := s.create(ctx, req); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Begun{ID: id, AuthURL: s.baseURL() + PathStart + id, Expires: req.Expires}, nil
}

func (s *Service) limiter() *authn.RateLimiter { return s.rate }

// CheckClientCallback accepts only plain http to a loopback address with
// an explicit port: the browser hands the login back to a CLI on the same
// machine, never to a remote site.
func CheckClientCallback(raw string) error {
	const what = "client_callback_url"
	if raw == "" {
		return trace.BadParameter("%s: missing (the CLI's http://127.0.0.1:PORT/... listener)", what)
	}
	if len(raw) > 1024 {
		return trace.BadParameter("%s: longer than 1024 characters", what)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return trace.BadParameter("%s: %v", what, err)
	}
	if u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return trace.BadParameter("%s: %q must be http://127.0.0.1:PORT/... or http://localhost:PORT/...", what, raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || port == "" || port == "0" {
		return trace.BadParameter("%s: %q needs an explicit port", what, raw)
	}
	if !types.IsLoopbackHost(host) {
		return trace.BadParameter("%s: %q is not a loopback address; the login can only return to this machine's 127.0.0.1 or localhost", what, raw)
	}
	return nil
}

func (s *Service) create(ctx context.Context, req *request) error {
	data, err := json.Marshal(req)
	if err != nil {
		return trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, storage.Item{Key: requestPrefix + req.ID, Value: data, Expires: req.Expires}); err != nil {
		return trace.Wrap(err)
	}
	_, err = s.cfg.Backend.Create(ctx, storage.Item{Key: stateKey(req.State), Value: []byte(req.ID), Expires: req.Expires})
	return trace.Wrap(err)
}

func (s *Service) get(ctx context.Context, id string) (*request, error) {
	notFound := trace.NotFound("the SSO login request was not found: it expired (a login must finish within %s), its result was already fetched, or it never existed; start the login again", s.cfg.RequestTTL)
	if !validID(id) {
		return nil, notFound
	}
	item, err := s.cfg.Backend.Get(ctx, requestPrefix+id)
	if trace.IsNotFound(err) {
		return nil, notFound
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var req request
	if err := json.Unmarshal(item.Value, &req); err != nil {
		return nil, trace.Wrap(err)
	}
	if !s.cfg.Clock().Before(req.Expires) {
		return nil, notFound
	}
	req.revision = item.Revision
	return &req, nil
}

// byState finds the request a provider's answer belongs to.
func (s *Service) byState(ctx context.Context, state string) (*request, error) {
	if state == "" {
		return nil, trace.BadParameter("the identity provider's answer carries no state; start the login again")
	}
	item, err := s.cfg.Backend.Get(ctx, stateKey(state))
	if trace.IsNotFound(err) {
		return nil, trace.AccessDenied("state mismatch: the identity provider's answer belongs to no pending login (it expired, already finished, or was not started on this gateway); start the login again")
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	req, err := s.get(ctx, string(item.Value))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if subtle.ConstantTimeCompare([]byte(req.State), []byte(state)) != 1 {
		return nil, trace.AccessDenied("state mismatch: start the login again")
	}
	return req, nil
}

// update writes req back if nobody changed it since it was read.
func (s *Service) update(ctx context.Context, req *request) error {
	data, err := json.Marshal(req)
	if err != nil {
		return trace.Wrap(err)
	}
	item, err := s.cfg.Backend.CompareAndSwap(ctx, req.revision, storage.Item{Key: requestPrefix + req.ID, Value: data, Expires: req.Expires})
	if trace.IsCompareFailed(err) || trace.IsNotFound(err) {
		return trace.CompareFailed("the SSO login request changed meanwhile (answered twice?); start the login again")
	}
	if err != nil {
		return trace.Wrap(err)
	}
	req.revision = item.Revision
	return nil
}

func (s *Service) remove(ctx context.Context, req *request) {
	for _, key := range []string{requestPrefix + req.ID, stateKey(req.State)} {
		if err := s.cfg.Backend.Delete(ctx, key); err != nil && !trace.IsNotFound(err) {
			s.cfg.Logger.WarnContext(ctx, "Removing a finished SSO login request failed; it expires on its own.", "error", err)
		}
	}
}

// Result is the outcome of a login, for the client that started it.
type Result struct {
	Pending   bool
	Login     *sigilv1.LoginResponse
	Connector string
}

// Result returns a finished login's certificates once, to the client
// holding the secret whose hash Begin got. A failed login returns its
// error.
func (s *Service) Result(ctx context.Context, id string, secret []byte) (*Result, error) {
	req, err := s.get(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if req.Web || len(req.SecretHash) == 0 || subtle.ConstantTimeCompare(hashOf(secret), req.SecretHash) != 1 {
		return nil, trace.AccessDenied("the client secret does not match this SSO login request")
	}
	if req.Stage != stageDone {
		return &Result{Pending: true, Connector: req.Connector}, nil
	}
	// Claim the result: of two concurrent readers only one gets it.
	req.Stage = "fetched"
	if err := s.update(ctx, req); err != nil {
		return nil, trace.Wrap(err)
	}
	s.remove(ctx, req)
	if req.Error != "" {
		return nil, trace.AccessDenied("%s", req.Error)
	}
	resp := &sigilv1.LoginResponse{}
	if err := proto.Unmarshal(req.Result, resp); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Result{Login: resp, Connector: req.Connector}, nil
}

// clientRedirect is where the browser goes when a CLI login ends.
func clientRedirect(req *request, errMsg string) string {
	u, err := url.Parse(req.ClientCallback)
	if err != nil {
		return ""
	}
	q := u.Query()
	if errMsg != "" {
		q.Set("error", clip(errMsg, 1000))
	} else {
		q.Set("request_id", req.ID)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
