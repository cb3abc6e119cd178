package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/resources"
)

// Database server certificates are long-lived: the database keeps using
// them until an admin re-signs (the DB CA itself lives 10 years).
const (
	defaultDBServerCertTTL = 365 * 24 * time.Hour
	maxDBServerHosts       = 32
	// minDBCertTTL bounds how short a routed certificate may be asked for.
	minDBCertTTL = 10 * time.Second
)

type databaseService struct{ s *Server }

func dbInfo(db *types.Database, users, names []string) *sigilv1.DatabaseInfo {
	return &sigilv1.DatabaseInfo{
		Name:        db.Metadata.Name,
		Protocol:    db.Spec.Protocol,
		Labels:      db.Metadata.Labels,
		Description: db.Metadata.Description,
		DbUsers:     users,
		DbNames:     names,
	}
}

func (h *databaseService) ListDatabases(ctx context.Context, _ *connect.Request[sigilv1.ListDatabasesRequest]) (*connect.Response[sigilv1.ListDatabasesResponse], error) {
	s := h.s
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	dbs, err := resources.List[*types.Database](ctx, s.cfg.Resources, types.KindDatabase)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.ListDatabasesResponse{}
	for _, db := range dbs {
		visible, users, names, err := checker.DatabaseAccess(db)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if visible {
			resp.Databases = append(resp.Databases, dbInfo(db, users, names))
		}
	}
	return connect.NewResponse(resp), nil
}

func (h *databaseService) GenerateDatabaseCert(ctx context.Context, req *connect.Request[sigilv1.GenerateDatabaseCertRequest]) (*connect.Response[sigilv1.GenerateDatabaseCertResponse], error) {
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp, err := h.s.signDatabaseCert(ctx, id, req.Msg, nil)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// sessionMFA is a per-session MFA check that just passed (see mfa.go).
type sessionMFA struct {
	device, deviceType string
}

// signDatabaseCert checks policy and signs a certificate routed to one
// database for id. With mfa, the certificate carries the MFA device and is
// valid MFACertTTL to connect (the session then lives on).
func (s *Server) signDatabaseCert(ctx context.Context, id *certid.Identity, m *sigilv1.GenerateDatabaseCertRequest, mfa *sessionMFA) (*sigilv1.GenerateDatabaseCertResponse, error) {
	if !id.Route.IsZero() {
		return nil, trace.AccessDenied("a routed certificate cannot issue other certificates; use your login certificate")
	}
	db, err := resources.Get[*types.Database](ctx, s.cfg.Resources, types.KindDatabase, m.Database)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checkerFor(ctx, id, types.KindDatabase, db.Metadata.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// Refuse early with the rule that refuses; the gateway checks again on
	// every connection, since roles and locks may change meanwhile.
	if _, err := checker.CheckDatabase(db, m.DbUser, m.DbName); err != nil {
		return nil, trace.Wrap(err)
	}
	pub, err := parseTLSPublicKey(m.TlsPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	ttl := time.Until(id.Expires)
	if ttl < minDBCertTTL {
		return nil, trace.AccessDenied("your login certificate expires in less than %s: run \"sigil login\" again", minDBCertTTL)
	}
	if m.TtlSeconds < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	if want := time.Duration(m.TtlSeconds) * time.Second; want > 0 && want < ttl {
		if want < minDBCertTTL {
			return nil, trace.BadParameter("ttl must be at least %s", minDBCertTTL)
		}
		ttl = want
	}
	routed := *id
	// Per-session MFA is proven per session certificate, never inherited
	// from the login.
	routed.MFADevice = ""
	if mfa != nil {
		routed.MFADevice = mfa.device
		ttl = MFACertTTL
	}
	routed.Route = certid.Route{ResourceKind: types.KindDatabase, ResourceName: db.Metadata.Name, DBUser: m.DbUser, DBName: m.DbName}
	certPEM, err := s.cfg.Authority.SignUserCert(&routed, pub, ttl)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if mfa != nil {
		if err := s.emit(ctx, &audit.Event{
			Type:     audit.EventMFAVerified,
			Identity: audit.IdentityOf(&routed),
			Resource: &audit.Resource{Kind: types.KindDatabase, Name: db.Metadata.Name, DbUser: m.DbUser, DbName: m.DbName},
			Success:  true,
			Details:  map[string]string{"device_type": mfa.deviceType, "purpose": "session"},
		}); err != nil {
			return nil, err
		}
	}
	if err := s.emit(ctx, &audit.Event{
		Type:     audit.EventCertIssued,
		Identity: audit.IdentityOf(&routed),
		Resource: &audit.Resource{Kind: types.KindDatabase, Name: db.Metadata.Name, DbUser: m.DbUser, DbName: m.DbName},
		Success:  true,
		Details:  map[string]string{"expires": routed.Expires.UTC().Format(time.RFC3339)},
	}); err != nil {
		return nil, err
	}
	_, users, names, err := checker.DatabaseAccess(db)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &sigilv1.GenerateDatabaseCertResponse{
		TlsCertPem: certPEM,
		TlsCaPem:   s.cfg.Authority.CertPEM(ca.TLSCA),
		Expires:    timestamppb.New(routed.Expires),
		Database:   dbInfo(db, users, names),
	}, nil
}

func (h *databaseService) SignDatabaseServer(ctx context.Context, req *connect.Request[sigilv1.SignDatabaseServerRequest]) (*connect.Response[sigilv1.SignDatabaseServerResponse], error) {
	s := h.s
	m := req.Msg
	id, err := s.authorize(ctx, types.KindDatabase, types.VerbCreate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	switch m.Format {
	case types.ProtocolPostgres, types.ProtocolMySQL:
	default:
		return nil, trace.BadParameter("--format: %q is not one of postgres, mysql", m.Format)
	}
	if len(m.Hosts) == 0 || len(m.Hosts) > maxDBServerHosts {
		return nil, trace.BadParameter("--host: give 1 to %d host names or IPs the database is reached by", maxDBServerHosts)
	}
	ttl := time.Duration(m.TtlSeconds) * time.Second
	if ttl < 0 {
		return nil, trace.BadParameter("--ttl must be positive")
	}
	if ttl == 0 {
		ttl = defaultDBServerCertTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	certPEM, err := s.cfg.Authority.SignDBServerCert(&key.PublicKey, m.Hosts, ttl)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.emit(ctx, &audit.Event{
		Type:     audit.EventCertIssued,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: types.KindDatabase},
		Success:  true,
		Details:  map[string]string{"purpose": "database server", "format": m.Format},
	}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.SignDatabaseServerResponse{
		CertPem: certPEM,
		KeyPem:  keyPEM,
		CaPem:   s.cfg.Authority.CertPEM(ca.DBCA),
	}), nil
}
