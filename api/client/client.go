package client

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
)

// DefaultTimeout bounds each API call when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// DefaultAddr is where an all-in-one sigild serves its gateway.
const DefaultAddr = "127.0.0.1:3443"

// Config configures a Client.
type Config struct {
	// Addr is the gateway host:port.
	Addr string
	// TLS must at least hold RootCAs that verify the gateway; it also holds
	// the client certificate for every call but ClusterInfo, Signup and Login.
	TLS *tls.Config
	// Timeout bounds each HTTP request (DefaultTimeout when zero).
	Timeout time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Addr == "" {
		return trace.BadParameter("missing gateway address (HOST:PORT)")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return trace.BadParameter("gateway address %q is not HOST:PORT", c.Addr)
	}
	if c.TLS == nil {
		return trace.BadParameter("missing TLS config: the gateway can only be reached over TLS")
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return trace.BadParameter("timeout must not be negative, got %v", c.Timeout)
	}
	return nil
}

// Client holds one Connect client per API service, all sharing one HTTP
// client (and so one connection pool).
type Client struct {
	Auth      sigilv1connect.AuthServiceClient
	Resources sigilv1connect.ResourceServiceClient
	Users     sigilv1connect.UserServiceClient
	Tokens    sigilv1connect.TokenServiceClient
	Locks     sigilv1connect.LockServiceClient
	Audit     sigilv1connect.AuditServiceClient
	Databases sigilv1connect.DatabaseServiceClient
	MFA       sigilv1connect.MFAServiceClient
	SSH       sigilv1connect.SSHServiceClient
	SSO       sigilv1connect.SSOServiceClient
	Requests  sigilv1connect.RequestServiceClient
	Approvals sigilv1connect.ApprovalServiceClient
	Join      sigilv1connect.JoinServiceClient

	// HTTPClient is exposed so callers can close idle connections.
	HTTPClient *http.Client
	// BaseURL is the root URL of the API ("https://" + Addr).
	BaseURL string
}

// New builds a Client. It does not dial: errors surface on the first call.
func New(cfg Config) (*Client, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	tlsConf := cfg.TLS.Clone()
	// The gateway only speaks TLS 1.3; refusing older versions here means a
	// downgrade can never be negotiated by a misconfigured caller.
	if tlsConf.MinVersion < tls.VersionTLS13 {
		tlsConf.MinVersion = tls.VersionTLS13
	}
	if tlsConf.ServerName == "" {
		host, _, _ := net.SplitHostPort(cfg.Addr)
		tlsConf.ServerName = host
	}
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tlsConf,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: cfg.Timeout,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConns:        16,
	}
	httpClient := &http.Client{Transport: transport, Timeout: cfg.Timeout}
	baseURL := "https://" + cfg.Addr
	return &Client{
		Auth:       sigilv1connect.NewAuthServiceClient(httpClient, baseURL),
		Resources:  sigilv1connect.NewResourceServiceClient(httpClient, baseURL),
		Users:      sigilv1connect.NewUserServiceClient(httpClient, baseURL),
		Tokens:     sigilv1connect.NewTokenServiceClient(httpClient, baseURL),
		Locks:      sigilv1connect.NewLockServiceClient(httpClient, baseURL),
		Audit:      sigilv1connect.NewAuditServiceClient(httpClient, baseURL),
		Databases:  sigilv1connect.NewDatabaseServiceClient(httpClient, baseURL),
		MFA:        sigilv1connect.NewMFAServiceClient(httpClient, baseURL),
		SSH:        sigilv1connect.NewSSHServiceClient(httpClient, baseURL),
		SSO:        sigilv1connect.NewSSOServiceClient(httpClient, baseURL),
		Requests:   sigilv1connect.NewRequestServiceClient(httpClient, baseURL),
		Approvals:  sigilv1connect.NewApprovalServiceClient(httpClient, baseURL),
		Join:       sigilv1connect.NewJoinServiceClient(httpClient, baseURL),
		HTTPClient: httpClient,
		BaseURL:    baseURL,
	}, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	c.HTTPClient.CloseIdleConnections()
}

// NewFromIdentity builds a Client that authenticates with id's certificate.
func NewFromIdentity(id *Identity, timeout time.Duration) (*Client, error) {
	tlsConf, err := id.TLSConfig()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return New(Config{Addr: id.Proxy, TLS: tlsConf, Timeout: timeout})
}
