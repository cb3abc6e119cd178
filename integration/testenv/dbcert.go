package testenv

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// DBCert is a routed database certificate with its key; all PEM.
type DBCert struct {
	CertPEM, KeyPEM, CAPEM []byte
}

// IssueDBCert asks the gateway, as the user logged in under the SIGIL_HOME
// home, for a certificate routed to database as dbUser/dbName, as "sigil
// db login" does; ttl 0 takes the default. The API's refusal is returned
// as is, so tests can assert on it.
func IssueDBCert(ctx context.Context, home, database, dbUser, dbName string, ttl time.Duration) (*DBCert, error) {
	prof, err := client.CurrentProfile(home)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	clt, err := client.NewFromIdentity(prof.Identity, 30*time.Second)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer clt.Close()
	key, err := client.GenerateKey()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	pub, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp, err := clt.Databases.GenerateDatabaseCert(ctx, connect.NewRequest(&sigilv1.GenerateDatabaseCertRequest{
		Database: database, DbUser: dbUser, DbName: dbName, TlsPublicKey: pub, TtlSeconds: int64(ttl / time.Second),
	}))
	if err != nil {
		return nil, err
	}
	return &DBCert{CertPEM: resp.Msg.TlsCertPem, KeyPEM: keyPEM, CAPEM: resp.Msg.TlsCaPem}, nil
}
