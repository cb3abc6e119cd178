package process

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	auditbadger "github.com/sigilhq/sigil/audit/store/badger"
	"github.com/sigilhq/sigil/gateway/mux"
	"github.com/sigilhq/sigil/gateway/mysql"
	"github.com/sigilhq/sigil/gateway/postgres"
	"github.com/sigilhq/sigil/gateway/session"
	sshgw "github.com/sigilhq/sigil/gateway/ssh"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/access"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/approvals"
	"github.com/sigilhq/sigil/services/bots"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/requests"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/sso"
	"github.com/sigilhq/sigil/services/storage"
	"github.com/sigilhq/sigil/services/storage/badger"
	"github.com/sigilhq/sigil/services/users"
	"github.com/sigilhq/sigil/web"
)

// Paths inside the data dir.
const (
	backendDir = "backend"
	// auditDir holds the audit log's own badger database.
	auditDir = "audit/log"
	// recordingsDir holds SSH session recordings (asciicast v2).
	recordingsDir = "recordings"
	// pruneInterval is how often retention runs.
	pruneInterval = time.Hour
	sealKeyFile   = "keys/ca-seal.key"
	// AdminIdentityDir holds the local admin identity sigilctl uses.
	AdminIdentityDir = "admin"
	// AdminIdentityName is the bot identity of sigilctl on the daemon host.
	AdminIdentityName = "sigilctl"
	adminCertTTL      = 24 * time.Hour
	serverCertTTL     = 30 * 24 * time.Hour
	// FirstAdminUser is created, with a signup link, on the first start.
	FirstAdminUser = "admin"
)

// Daemon is a running all-in-one sigild.
type Daemon struct {
	cfg       *Config
	log       *slog.Logger
	out       io.Writer
	backend   storage.Backend
	authority *ca.Authority
	audit     *auditbadger.Store
	// stopExport stops the SIEM forwarders.
	stopExport func()
	emitter    audit.Emitter
	users      *users.Service
	api        *apiserver.Server
	mux        *mux.Mux
	http       *http.Server
	addr       net.Addr
	mysql      *mysql.Server
	mysqlLn    net.Listener

	certMu     sync.Mutex
	serverCert *tls.Certificate
}

// Start brings the daemon up: it returns once the gateway listens. out
// receives the operator-facing messages (CA creation, first-admin link).
func Start(ctx context.Context, cfg *Config, log *slog.Logger, out io.Writer, version string) (d *Daemon, err error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	if log == nil {
		log = slog.Default()
	}
	d = &Daemon{cfg: cfg, log: log, out: out}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	sealer, err := ca.NewFileSealer(filepath.Join(cfg.DataDir, sealKeyFile))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	d.backend, err = badger.New(ctx, badger.Config{Dir: filepath.Join(cfg.DataDir, backendDir), Logger: log})
	if err != nil {
		return nil, trace.Wrap(err, "opening storage in %s (is another sigild running with this data dir?)", cfg.DataDir)
	}
	d.authority, err = ca.New(ctx, ca.Config{Backend: d.backend, Sealer: sealer, ClusterName: cfg.ClusterName, Logger: log})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	for _, t := range d.authority.Created() {
		fmt.Fprintf(out, "Created the %s CA.\n", t)
	}
	d.audit, err = auditbadger.New(ctx, auditbadger.Config{
		Dir:    filepath.Join(cfg.DataDir, auditDir),
		Signer: d.authority.AuditSigner(),
		Logger: log,
	})
	if err != nil {
		return nil, trace.Wrap(err, "opening the audit log in %s", cfg.DataDir)
	}
	d.emitter = audit.NewStoreEmitter(d.audit)
	if d.stopExport, err = cfg.Audit.Export.Start(ctx, d.audit, cfg.DataDir, log.With("component", "audit-export")); err != nil {
		return nil, trace.Wrap(err)
	}
	if cfg.Audit.Retention > 0 {
		go d.retentionLoop(ctx, cfg.Audit.Retention.Duration())
	}
	store, err := resources.New(d.backend)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	d.users, err = users.New(users.Config{Backend: d.backend, Resources: store, SignupTTL: cfg.Auth.SignupTTL.Duration(), Emitter: d.emitter, Logger: log})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	lockSvc, err := locks.New(store, nil)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	reqSvc, err := requests.New(requests.Config{Backend: d.backend})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// apprSvc is what the gateway asks before an agent's write runs where
	// a role says write_approval: true, and what reviewers use.
	apprSvc, err := approvals.New(approvals.Config{Backend: d.backend})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	botSvc, err := bots.New(bots.Config{Backend: d.backend, Resources: store, Locks: lockSvc, Users: d.users})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// One resolver decides for the API and the gateway alike.
	accessRes, err := access.New(access.Config{Resources: store, Requests: reqSvc, Delegates: botSvc})
	if err != nil {
		return nil, trace.Wrap(err)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, trace.Wrap(err, "listening on %s (set --listen to a free address)", cfg.Listen)
	}
	d.addr = ln.Addr()
	publicAddr := cfg.PublicAddr
	if publicAddr == "" {
		publicAddr = dialAddr(d.addr)
	}

	// MySQL servers speak first, so MySQL cannot share the sniffing port.
	d.mysqlLn, err = net.Listen("tcp", cfg.MySQLListen)
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err, "listening on %s for MySQL (set --mysql-listen to a free address)", cfg.MySQLListen)
	}

	ssoSvc, err := sso.New(sso.Config{
		Backend:    d.backend,
		Resources:  store,
		Sealer:     sealer,
		PublicAddr: publicAddr,
		Emitter:    d.emitter,
		Logger:     log.With("component", "sso"),
	})
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	mfaSvc, err := d.newMFA(sealer, publicAddr)
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	d.api, err = apiserver.New(apiserver.Config{
		Authority:      d.authority,
		Resources:      store,
		Users:          d.users,
		Locks:          lockSvc,
		Requests:       reqSvc,
		Approvals:      apprSvc,
		Bots:           botSvc,
		Access:         accessRes,
		Emitter:        d.emitter,
		SSO:            ssoSvc,
		AuditStore:     d.audit,
		AuditPublicKey: d.authority.AuditPublicKey(),
		ClusterName:    cfg.ClusterName,
		PublicAddr:     publicAddr,
		MySQLAddr:      mysqlPublicAddr(publicAddr, d.mysqlLn.Addr()),
		RecordingsDir:  filepath.Join(cfg.DataDir, recordingsDir),
		Version:        version,
		DefaultTTL:     cfg.Auth.CertTTL.Duration(),
		MFA:            mfaSvc,
		SecondFactor:   cfg.Auth.SecondFactor,
		Logger:         log.With("component", "api"),
	})
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	apiHandler := d.api.Handler()
	webHandler, err := web.New(web.Config{Signups: d.users, PublicAddr: publicAddr, SSO: ssoSvc, Finisher: d.api, Logger: log.With("component", "web"),
		Console: &web.ConsoleConfig{
			API:         apiHandler,
			Caller:      apiserver.WithWebCaller,
			Auth:        d.api,
			MFA:         mfaSvc,
			Backend:     d.backend,
			IdleTimeout: cfg.Auth.WebIdleTimeout.Duration(),
			SessionTTL:  cfg.Auth.CertTTL.Duration(),
			Origin:      d.api.WebURL(""),
		},
	})
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	if err := d.issueServerCert(publicAddr); err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}

	d.mux, err = mux.New(mux.Config{Listener: ln, Logger: log.With("component", "mux")})
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	sessions, err := session.New(session.Config{Authority: d.authority, Resources: store, Locks: lockSvc, Requests: reqSvc, Access: accessRes, Approvals: apprSvc, Emitter: d.emitter, Logger: d.log})
	if err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	if err := d.registerPostgres(sessions); err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	if err := d.registerMySQL(ctx, sessions); err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	if err := d.registerSSH(sessions, store, publicAddr); err != nil {
		ln.Close()
		return nil, trace.Wrap(err)
	}
	webLn := mux.NewConnListener(d.addr)
	d.mux.HandleALPN([]string{"h2", "http/1.1"}, webLn.Handler())
	d.mux.HandleDefaultTLS(webLn.Handler())

	root := http.NewServeMux()
	root.Handle("/web/", webHandler)
	root.Handle("/", apiHandler)
	d.http = &http.Server{
		Handler:           root,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		Protocols:         httpProtocols(),
	}
	tlsCfg := d.serverTLSConfig()
	go func() {
		if err := d.http.Serve(tls.NewListener(webLn, tlsCfg)); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error("web server stopped", "error", err)
		}
	}()
	go func() {
		if err := d.mux.Serve(ctx); err != nil {
			log.Error("gateway mux stopped", "error", err)
		}
	}()

	if err := d.writeAdminIdentity(); err != nil {
		return nil, trace.Wrap(err)
	}
	go d.renewLoop(ctx, publicAddr)
	if err := d.firstAdmin(ctx); err != nil {
		return nil, trace.Wrap(err)
	}
	fmt.Fprintf(out, "MySQL listener on %s\n", dialAddr(d.mysqlLn.Addr()))
	fmt.Fprintf(out, "Sigil gateway listening on %s\nGateway CA fingerprint: %s\nData dir: %s\n",
		d.addr, client.Fingerprint(d.authority.Certificate(ca.TLSCA).Raw), cfg.DataDir)
	return d, nil
}

// newMFA returns the MFA service. Security keys need the public address
// to be a DNS name (or loopback, served as localhost); without that only
// TOTP devices work.
func (d *Daemon) newMFA(sealer ca.Sealer, publicAddr string) (*mfa.Service, error) {
	wa, err := authn.NewWebAuthn(authn.WebAuthnConfig{PublicAddr: publicAddr, DisplayName: "Sigil " + d.cfg.ClusterName})
	if err != nil {
		d.log.Warn("Security keys (WebAuthn) are disabled; only TOTP devices work.", "reason", trace.UserMessage(err))
		wa = nil
	}
	svc, err := mfa.New(mfa.Config{Backend: d.backend, Sealer: sealer, WebAuthn: wa, Issuer: "Sigil " + d.cfg.ClusterName, Logger: d.log.With("component", "mfa")})
	return svc, trace.Wrap(err)
}

// registerPostgres routes PostgreSQL clients on the gateway port to the
// PostgreSQL engine.
func (d *Daemon) registerPostgres(sessions *session.Manager) error {
	pg, err := postgres.New(postgres.Config{Sessions: sessions, GetCertificate: d.serverTLSConfig().GetCertificate, Logger: d.log})
	if err != nil {
		return trace.Wrap(err)
	}
	pg.Register(d.mux)
	return nil
}

// registerMySQL starts the MySQL listener (MySQL servers speak first, so
// they cannot share the sniffing port) and routes ALPN sigil-mysql on the
// gateway port to the same engine.
func (d *Daemon) registerMySQL(ctx context.Context, sessions *session.Manager) error {
	my, err := mysql.New(mysql.Config{Sessions: sessions, GetCertificate: d.serverTLSConfig().GetCertificate, Logger: d.log})
	if err != nil {
		return trace.Wrap(err)
	}
	d.mysql = my
	my.Register(d.mux)
	go func() {
		if err := my.Serve(ctx, d.mysqlLn); err != nil {
			d.log.Error("MySQL listener stopped", "error", err)
		}
	}()
	return nil
}

// registerSSH routes SSH clients (sniffed "SSH-" banner) on the gateway
// port to the SSH engine.
func (d *Daemon) registerSSH(sessions *session.Manager, store *resources.Store, publicAddr string) error {
	names := []string{"localhost", "127.0.0.1", "::1"}
	for _, hp := range []string{publicAddr, d.cfg.Listen} {
		if host, _, err := net.SplitHostPort(hp); err == nil && host != "" && !slices.Contains(names, host) {
			if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
				names = append([]string{host}, names...)
			}
		}
	}
	srv, err := sshgw.New(sshgw.Config{
		Sessions:       sessions,
		Authority:      d.authority,
		Resources:      store,
		ClusterName:    d.cfg.ClusterName,
		RecordingsDir:  filepath.Join(d.cfg.DataDir, recordingsDir),
		HostNames:      names,
		GetCertificate: d.serverTLSConfig().GetCertificate,
		Logger:         d.log,
	})
	if err != nil {
		return trace.Wrap(err)
	}
	srv.Register(d.mux)
	return nil
}

// mysqlPublicAddr is the MySQL address clients are told: the public
// address's host with the MySQL listener's port.
func mysqlPublicAddr(publicAddr string, ln net.Addr) string {
	addr := dialAddr(ln)
	host, _, err := net.SplitHostPort(publicAddr)
	_, port, perr := net.SplitHostPort(addr)
	if err != nil || perr != nil || host == "" {
		return addr
	}
	return net.JoinHostPort(host, port)
}

// MySQLAddr is the MySQL listener's address.
func (d *Daemon) MySQLAddr() net.Addr { return d.mysqlLn.Addr() }

func httpProtocols() *http.Protocols {
	p := &http.Protocols{}
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	return p
}

// Addr is the gateway's listening address.
func (d *Daemon) Addr() net.Addr { return d.addr }

// Close stops the daemon.
func (d *Daemon) Close() error {
	var errs []error
	if d.mux != nil {
		errs = append(errs, d.mux.Close())
	}
	if d.mysql != nil {
		errs = append(errs, d.mysql.Close())
	}
	if d.mysqlLn != nil {
		// Closed already when the MySQL engine served it.
		_ = d.mysqlLn.Close()
	}
	if d.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, d.http.Shutdown(ctx))
		cancel()
	}
	if d.stopExport != nil {
		d.stopExport()
	}
	// After the servers stopped, so that their last events are stored.
	if d.audit != nil {
		errs = append(errs, d.audit.Close())
	}
	if d.backend != nil {
		errs = append(errs, d.backend.Close())
	}
	return trace.NewAggregate(errs...)
}

// retentionLoop prunes events older than retention, now and every hour.
func (d *Daemon) retentionLoop(ctx context.Context, retention time.Duration) {
	t := time.NewTicker(pruneInterval)
	defer t.Stop()
	for {
		n, err := d.audit.Prune(ctx, time.Now().Add(-retention))
		switch {
		case err != nil && ctx.Err() == nil:
			d.log.Error("pruning the audit log", "error", err)
		case n > 0:
			d.log.Info("pruned old audit events", "events", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dialAddr turns a listening address into one a local client can dial.
func dialAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(tcp.Port))
}

func (d *Daemon) serverTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2", "http/1.1"},
		// Login and signup come without a certificate; every other call is
		// refused by the API unless a user-CA certificate was presented.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  d.authority.CertPool(ca.UserCA),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			d.certMu.Lock()
			defer d.certMu.Unlock()
			return d.serverCert, nil
		},
	}
}

// issueServerCert signs the gateway's TLS certificate for localhost, the
// listen address and the public address.
func (d *Daemon) issueServerCert(publicAddr string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return trace.Wrap(err)
	}
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, hp := range []string{publicAddr, d.cfg.Listen} {
		host, _, err := net.SplitHostPort(hp)
		if err != nil || host == "" {
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
		} else {
			dns = append(dns, host)
		}
	}
	certPEM, err := d.authority.SignServerCert(&key.PublicKey, dns, ips, serverCertTTL)
	if err != nil {
		return trace.Wrap(err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return trace.BadParameter("CA returned no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return trace.Wrap(err)
	}
	d.certMu.Lock()
	d.serverCert = &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf}
	d.certMu.Unlock()
	return nil
}

// writeAdminIdentity writes a short-lived admin certificate into the data
// dir so that sigilctl on this host works without a login. Only whoever can
// read the data dir (0700) can use it — the same people who can read the
// storage anyway.
func (d *Daemon) writeAdminIdentity() error {
	key, err := client.GenerateKey()
	if err != nil {
		return trace.Wrap(err)
	}
	id := &certid.Identity{Name: AdminIdentityName, Kind: certid.KindBot, Roles: []string{types.RoleAdmin}}
	certPEM, err := d.authority.SignUserCert(id, &key.PublicKey, adminCertTTL)
	if err != nil {
		return trace.Wrap(err)
	}
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	if err != nil {
		return trace.Wrap(err)
	}
	return trace.Wrap(client.WriteIdentityDir(filepath.Join(d.cfg.DataDir, AdminIdentityDir), &client.Identity{
		Proxy:    dialAddr(d.addr),
		CertPEM:  certPEM,
		KeyPEM:   keyPEM,
		TLSCAPEM: d.authority.CertPEM(ca.TLSCA),
	}))
}

// renewLoop re-issues the admin identity and the server certificate well
// before they expire.
func (d *Daemon) renewLoop(ctx context.Context, publicAddr string) {
	t := time.NewTicker(adminCertTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := d.writeAdminIdentity(); err != nil {
				d.log.Error("renewing the local admin identity", "error", err)
			}
			if err := d.issueServerCert(publicAddr); err != nil {
				d.log.Error("renewing the gateway certificate", "error", err)
			}
		}
	}
}

// firstAdmin creates the first admin user with a one-time signup link when
// no user exists, and re-issues the link on later starts until the admin
// has signed up, so an operator is never locked out.
func (d *Daemon) firstAdmin(ctx context.Context) error {
	has, err := d.users.HasUsers(ctx)
	if err != nil {
		return trace.Wrap(err)
	}
	var token string
	switch {
	case !has:
		u, err := types.NewUser(FirstAdminUser, []string{types.RoleAdmin}, nil)
		if err != nil {
			return trace.Wrap(err)
		}
		if _, token, _, err = d.users.Add(ctx, u); err != nil {
			return trace.Wrap(err)
		}
	default:
		pending, err := d.users.PendingSignup(ctx, FirstAdminUser)
		if err != nil || !pending {
			return trace.Wrap(err)
		}
		if token, _, err = d.users.NewSignupToken(ctx, FirstAdminUser); err != nil {
			return trace.Wrap(err)
		}
	}
	fmt.Fprintf(d.out, "\nCreate the first admin (user %q, valid %s) — open\n  %s\nor run\n  sigil signup %s --proxy %s\n\n",
		FirstAdminUser, d.cfg.Auth.SignupTTL, d.api.SignupURL(token), token, dialAddr(d.addr))
	return nil
}
