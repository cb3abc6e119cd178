package sso

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/authn/saml"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage"
)

// Storage keys. Secrets live apart from the connector resources so that
// no API returning resources can leak them.
const (
	oidcSecretPrefix = "/sso/oidc_secrets/"
	samlKeyPrefix    = "/sso/saml_sp_keys/"
	requestPrefix    = "/sso/requests/"
	statePrefix      = "/sso/states/"
	assertionPrefix  = "/sso/saml_assertions/"
)

const (
	// DefaultRequestTTL is how long a login may take, from CreateSSOLogin
	// to the provider's answer.
	DefaultRequestTTL = 5 * time.Minute
	// maxProviderResponse bounds every body read from a provider
	// (discovery, keys, tokens, userinfo, metadata).
	maxProviderResponse = 1 << 20
	// metadataCacheTTL is how long fetched IdP metadata is reused.
	metadataCacheTTL = time.Hour
)

// Paths of the browser side, under the gateway's public address.
const (
	PathStart        = "/web/sso/start/"
	PathOIDCCallback = "/web/sso/oidc/callback"
	PathSAMLACS      = "/web/sso/saml/acs"
	PathSAMLMetadata = "/web/sso/saml/metadata/"
	PathWebLogin     = "/web/sso/login/"
)

// Config configures the service.
type Config struct {
	Backend   storage.Backend
	Resources *resources.Store
	// Sealer encrypts connector secrets at rest (the CA key sealer).
	Sealer ca.Sealer
	// PublicAddr is the gateway's host:port, for default redirect, ACS
	// and entity URLs.
	PublicAddr string
	// Emitter records failed SSO logins; successful ones are recorded by
	// the Finisher, which issues the certificates.
	Emitter audit.Emitter
	// HTTPClient reaches identity providers; the default bounds time and
	// response sizes.
	HTTPClient *http.Client
	// Limiter bounds how fast one address can start logins (each one is
	// stored for a few minutes); the default allows 60 a minute.
	Limiter    *authn.RateLimiter
	RequestTTL time.Duration
	Clock      func() time.Time
	Logger     *slog.Logger
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Backend == nil:
		return trace.BadParameter("sso: missing Backend")
	case c.Resources == nil:
		return trace.BadParameter("sso: missing Resources")
	case c.Sealer == nil:
		return trace.BadParameter("sso: missing Sealer")
	case c.PublicAddr == "":
		return trace.BadParameter("sso: missing PublicAddr")
	case c.Emitter == nil:
		return trace.BadParameter("sso: missing Emitter")
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{
			Timeout:   15 * time.Second,
			Transport: &limitedTransport{next: http.DefaultTransport, max: maxProviderResponse},
			// Discovery and metadata URLs are configured by an admin;
			// following a redirect elsewhere is not what they configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Limiter == nil {
		l, err := authn.NewRateLimiter(authn.RateLimiterConfig{
			PerAddr: authn.Limit{Attempts: 60, Per: time.Minute, Burst: 60},
			Clock:   c.Clock,
		})
		if err != nil {
			return trace.Wrap(err)
		}
		c.Limiter = l
	}
	if c.RequestTTL == 0 {
		c.RequestTTL = DefaultRequestTTL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Service manages connectors' secrets and SSO login requests.
type Service struct {
	cfg  Config
	rate *authn.RateLimiter

	mdMu sync.Mutex
	// metadata caches fetched IdP metadata per connector.
	metadata map[string]cachedMetadata
}

type cachedMetadata struct {
	url     string
	data    []byte
	fetched time.Time
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg, rate: cfg.Limiter, metadata: map[string]cachedMetadata{}}, nil
}

// baseURL is https://<public addr>.
func (s *Service) baseURL() string { return "https://" + s.cfg.PublicAddr }

// ConnectorInfo is what anyone may know about a connector.
type ConnectorInfo struct {
	Name        string
	Kind        string
	DisplayName string
}

// ListConnectors returns every connector, by name.
func (s *Service) ListConnectors(ctx context.Context) ([]ConnectorInfo, error) {
	var out []ConnectorInfo
	oidcs, err := resources.List[*types.OIDCConnector](ctx, s.cfg.Resources, types.KindOIDCConnector)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	for _, c := range oidcs {
		out = append(out, ConnectorInfo{Name: c.Metadata.Name, Kind: c.Kind, DisplayName: displayName(c.Spec.DisplayName, c.Metadata.Name)})
	}
	samls, err := resources.List[*types.SAMLConnector](ctx, s.cfg.Resources, types.KindSAMLConnector)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	for _, c := range samls {
		out = append(out, ConnectorInfo{Name: c.Metadata.Name, Kind: c.Kind, DisplayName: displayName(c.Spec.DisplayName, c.Metadata.Name)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func displayName(display, name string) string {
	if display != "" {
		return display
	}
	return name
}

// connector finds a connector of either kind by name.
func (s *Service) connector(ctx context.Context, name string) (types.Resource, error) {
	if err := types.ValidateName("connector", name); err != nil {
		return nil, trace.Wrap(err)
	}
	for _, kind := range []string{types.KindOIDCConnector, types.KindSAMLConnector} {
		r, err := s.cfg.Resources.Get(ctx, kind, name)
		if err == nil {
			return r, nil
		}
		if !trace.IsNotFound(err) {
			return nil, trace.Wrap(err)
		}
	}
	return nil, trace.NotFound("no SSO connector named %q; see \"sigil login --help\" or ask an admin (sigilctl get oidc_connector, sigilctl get saml_connector)", name)
}

// CheckConnector refuses a connector whose name another kind already
// uses: users log in with --auth NAME, which must be unambiguous.
func (s *Service) CheckConnector(ctx context.Context, r types.Resource) error {
	other := types.KindSAMLConnector
	if r.GetKind() == types.KindSAMLConnector {
		other = types.KindOIDCConnector
	}
	_, err := s.cfg.Resources.Get(ctx, other, r.GetMetadata().Name)
	switch {
	case err == nil:
		return trace.AlreadyExists("a %s named %q exists; connector names are shared by both kinds (users pick one with --auth NAME)", other, r.GetMetadata().Name)
	case trace.IsNotFound(err):
		return nil
	}
	return trace.Wrap(err)
}

func secretAAD(name string) []byte {
	return []byte(types.KindOIDCConnector + "/" + name + "/client_secret")
}
func spKeyAAD(name string) []byte { return []byte(types.KindSAMLConnector + "/" + name + "/sp_key") }

// ConnectorStored runs after a connector resource was written: it seals
// an OIDC client secret given with it (an empty one keeps the stored
// secret) and makes sure a SAML connector has its service-provider key.
func (s *Service) ConnectorStored(ctx context.Context, r types.Resource, clientSecret string) error {
	name := r.GetMetadata().Name
	switch r.GetKind() {
	case types.KindOIDCConnector:
		if clientSecret == "" {
			return nil
		}
		sealed, err := s.cfg.Sealer.Seal([]byte(clientSecret), secretAAD(name))
		if err != nil {
			return trace.Wrap(err, "sealing the client secret")
		}
		_, err = s.cfg.Backend.Put(ctx, storage.Item{Key: oidcSecretPrefix + name, Value: sealed})
		return trace.Wrap(err)
	case types.KindSAMLConnector:
		_, _, err := s.spKey(ctx, name)
		return trace.Wrap(err)
	}
	return nil
}

// ConnectorDeleted removes a deleted connector's secrets.
func (s *Service) ConnectorDeleted(ctx context.Context, kind, name string) error {
	key := oidcSecretPrefix + name
	if kind == types.KindSAMLConnector {
		key = samlKeyPrefix + name
		s.mdMu.Lock()
		delete(s.metadata, name)
		s.mdMu.Unlock()
	}
	if err := s.cfg.Backend.Delete(ctx, key); err != nil && !trace.IsNotFound(err) {
		return trace.Wrap(err)
	}
	return nil
}

// clientSecret unseals an OIDC connector's client secret ("" if none).
func (s *Service) clientSecret(ctx context.Context, name string) (string, error) {
	item, err := s.cfg.Backend.Get(ctx, oidcSecretPrefix+name)
	if trace.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", trace.Wrap(err)
	}
	plain, err := s.cfg.Sealer.Open(item.Value, secretAAD(name))
	if err != nil {
		return "", trace.Wrap(err, "unsealing the client secret of connector %q", name)
	}
	return string(plain), nil
}

// spKeyRecord is a SAML connector's service-provider key, sealed.
type spKeyRecord struct {
	SealedKey []byte `json:"sealed_key"`
	CertDER   []byte `json:"cert_der"`
}

// spKey returns a SAML connector's SP key, creating it on first use.
func (s *Service) spKey(ctx context.Context, name string) (*rsa.PrivateKey, *x509.Certificate, error) {
	for attempt := 0; attempt < 2; attempt++ {
		item, err := s.cfg.Backend.Get(ctx, samlKeyPrefix+name)
		if err == nil {
			return s.openSPKey(name, item.Value)
		}
		if !trace.IsNotFound(err) {
			return nil, nil, trace.Wrap(err)
		}
		key, cert, err := saml.GenerateKey("sigil "+name, s.cfg.Clock())
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		sealed, err := s.cfg.Sealer.Seal(der, spKeyAAD(name))
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		data, err := json.Marshal(spKeyRecord{SealedKey: sealed, CertDER: cert.Raw})
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		_, err = s.cfg.Backend.Create(ctx, storage.Item{Key: samlKeyPrefix + name, Value: data})
		if err == nil {
			return key, cert, nil
		}
		// Another daemon created it first: use theirs.
		if !trace.IsAlreadyExists(err) {
			return nil, nil, trace.Wrap(err)
		}
	}
	return nil, nil, trace.CompareFailed("the SAML key of connector %q is being created concurrently; try again", name)
}

func (s *Service) openSPKey(name string, data []byte) (*rsa.PrivateKey, *x509.Certificate, error) {
	var rec spKeyRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, nil, trace.Wrap(err, "decoding the SAML key of connector %q", name)
	}
	der, err := s.cfg.Sealer.Open(rec.SealedKey, spKeyAAD(name))
	if err != nil {
		return nil, nil, trace.Wrap(err, "unsealing the SAML key of connector %q", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	key, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, trace.BadParameter("the SAML key of connector %q is a %T, want RSA", name, k)
	}
	cert, err := x509.ParseCertificate(rec.CertDER)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return key, cert, nil
}

// samlEntityID, samlACS and samlMetadataURL apply the gateway defaults.
func (s *Service) samlEntityID(c *types.SAMLConnector) string {
	if c.Spec.EntityID != "" {
		return c.Spec.EntityID
	}
	return s.samlMetadataURL(c)
}

func (s *Service) samlACS(c *types.SAMLConnector) string {
	if c.Spec.ACSURL != "" {
		return c.Spec.ACSURL
	}
	return s.baseURL() + PathSAMLACS
}

func (s *Service) samlMetadataURL(c *types.SAMLConnector) string {
	return s.baseURL() + PathSAMLMetadata + c.Metadata.Name
}

func (s *Service) oidcRedirectURL(c *types.OIDCConnector) string {
	if c.Spec.RedirectURL != "" {
		return c.Spec.RedirectURL
	}
	return s.baseURL() + PathOIDCCallback
}

// serviceProvider builds a SAML connector's SP, fetching the IdP
// metadata when the connector names a URL.
func (s *Service) serviceProvider(ctx context.Context, c *types.SAMLConnector) (*saml.SP, error) {
	key, cert, err := s.spKey(ctx, c.Metadata.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	md := []byte(c.Spec.IDPMetadata)
	if c.Spec.IDPMetadataURL != "" {
		if md, err = s.idpMetadata(ctx, c); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	sp, err := saml.New(saml.Config{
		EntityID:    s.samlEntityID(c),
		ACSURL:      s.samlACS(c),
		MetadataURL: s.samlMetadataURL(c),
		IDPMetadata: md,
		Key:         key,
		Certificate: cert,
	})
	if err != nil {
		return nil, trace.Wrap(err, "SAML connector %q", c.Metadata.Name)
	}
	return sp, nil
}

// SPMetadata returns the metadata XML to register at a SAML connector's
// IdP.
func (s *Service) SPMetadata(ctx context.Context, name string) ([]byte, error) {
	c, err := resources.Get[*types.SAMLConnector](ctx, s.cfg.Resources, types.KindSAMLConnector, name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// The metadata does not depend on the IdP's: build it even while the
	// IdP is unreachable, since registering Sigil there may come first.
	key, cert, err := s.spKey(ctx, name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	md, err := saml.SPMetadata(saml.Config{
		EntityID:    s.samlEntityID(c),
		ACSURL:      s.samlACS(c),
		MetadataURL: s.samlMetadataURL(c),
		Key:         key,
		Certificate: cert,
	})
	return md, trace.Wrap(err)
}

// idpMetadata fetches (or reuses, for an hour) a connector's IdP metadata.
func (s *Service) idpMetadata(ctx context.Context, c *types.SAMLConnector) ([]byte, error) {
	name, mdURL := c.Metadata.Name, c.Spec.IDPMetadataURL
	s.mdMu.Lock()
	cached, ok := s.metadata[name]
	s.mdMu.Unlock()
	now := s.cfg.Clock()
	if ok && cached.url == mdURL && now.Sub(cached.fetched) < metadataCacheTTL {
		return cached.data, nil
	}
	data, err := s.fetch(ctx, mdURL, types.MaxIDPMetadataSize)
	if err != nil {
		if ok && cached.url == mdURL {
			s.cfg.Logger.WarnContext(ctx, "Fetching IdP metadata failed; using the copy fetched before.", "connector", name, "error", err)
			return cached.data, nil
		}
		return nil, trace.Wrap(err, "fetching the IdP metadata of connector %q", name)
	}
	if _, err := saml.ParseIDPMetadata(data); err != nil {
		return nil, trace.Wrap(err, "IdP metadata from %s", mdURL)
	}
	s.mdMu.Lock()
	s.metadata[name] = cachedMetadata{url: mdURL, data: data, fetched: now}
	s.mdMu.Unlock()
	return data, nil
}

func (s *Service) fetch(ctx context.Context, u string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, trace.ConnectionProblem(err, "GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, trace.ConnectionProblem(nil, "GET %s: HTTP %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, trace.ConnectionProblem(err, "GET %s: %v", u, err)
	}
	if int64(len(data)) > max {
		return nil, trace.BadParameter("GET %s: the answer is larger than %d bytes", u, max)
	}
	return data, nil
}

// limitedTransport fails reads past max bytes of any response body: the
// OIDC library reads whole bodies.
type limitedTransport struct {
	next http.RoundTripper
	max  int64
}

func (t *limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

var errBodyTooLarge = errors.New("the identity provider's answer is too large")

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly max bytes from a longer one.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, errBodyTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// clientIP is the address part of host:port.
func clientIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func describeKind(kind string) string {
	if kind == types.KindSAMLConnector {
		return "saml"
	}
	return "oidc"
}
