package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// Files of a profile's SSH login, under <profile>/ssh/, named so that
// stock OpenSSH finds the certificate next to the key.
const (
	sshDir            = "ssh"
	sshKeyFile        = "id_ed25519"
	sshCertFile       = "id_ed25519-cert.pub"
	sshKnownHostsFile = "known_hosts"
	sshClusterFile    = "cluster"
	// sshCertMargin is how long the SSH certificate must still be valid
	// to be reused rather than re-issued.
	sshCertMargin = 30 * time.Second
	maxSSHFile    = 64 << 10
)

type sshFiles struct {
	dir, key, cert, knownHosts, cluster string
}

func sshFilesFor(profileDir string) sshFiles {
	dir := filepath.Join(profileDir, sshDir)
	return sshFiles{
		dir:        dir,
		key:        filepath.Join(dir, sshKeyFile),
		cert:       filepath.Join(dir, sshCertFile),
		knownHosts: filepath.Join(dir, sshKnownHostsFile),
		cluster:    filepath.Join(dir, sshClusterFile),
	}
}

// sshCreds is what an SSH connection to the gateway needs.
type sshCreds struct {
	files   sshFiles
	signer  gossh.Signer
	cert    *gossh.Certificate
	hostCAs []gossh.PublicKey
	cluster string
}

// expires is when the SSH certificate stops working.
func (c *sshCreds) expires() time.Time { return time.Unix(int64(c.cert.ValidBefore), 0) }

// sshCredsFor returns the profile's SSH credentials, issuing a fresh
// certificate (with the login certificate) when there is none, it is
// about to expire, or it predates the current login.
func (a *app) sshCredsFor(ctx context.Context, p *client.Profile) (*sshCreds, error) {
	files := sshFilesFor(p.Dir)
	creds, err := loadSSHCreds(files)
	if err == nil {
		tlsExp := p.Identity.Expires()
		exp := creds.expires()
		fresh := a.now().Add(sshCertMargin).Before(exp)
		// Issued with the current login: both expire together (within
		// the time a login takes).
		current := exp.Sub(tlsExp).Abs() < 2*time.Minute
		if fresh && current {
			return creds, nil
		}
	} else {
		a.logger().DebugContext(ctx, "No usable SSH certificate in the profile.", "error", err)
	}
	return a.issueSSHCreds(ctx, p)
}

// issueSSHCreds asks the gateway to sign the profile's SSH key (created
// when missing) and writes the certificate, the host CA and the cluster
// name next to it.
func (a *app) issueSSHCreds(ctx context.Context, p *client.Profile) (*sshCreds, error) {
	if err := a.checkLoginValid(p); err != nil {
		return nil, trace.Wrap(err)
	}
	files := sshFilesFor(p.Dir)
	signer, err := loadOrCreateSSHKey(files)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	clt, err := client.NewFromIdentity(p.Identity, a.timeout)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer clt.Close()
	resp, err := clt.SSH.GenerateSSHCert(ctx, connect.NewRequest(&sigilv1.GenerateSSHCertRequest{
		SshPublicKey: gossh.MarshalAuthorizedKey(signer.PublicKey()),
	}))
	if err != nil {
		return nil, apiError(err, p.Proxy)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{files.cert, resp.Msg.SshCert},
		{files.knownHosts, resp.Msg.KnownHosts},
		{files.cluster, []byte(resp.Msg.ClusterName + "\n")},
	} {
		if err := client.WriteFileAtomic(f.path, f.data, 0o600); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	creds, err := loadSSHCreds(files)
	if err != nil {
		return nil, trace.Wrap(err, "the gateway returned an unusable SSH certificate")
	}
	return creds, nil
}

// loginSSH gets SSH credentials right after a login, so that stock ssh
// (sigil config ssh) works at once. A gateway without SSH support only
// costs the SSH part: sigil ssh retries on first use.
func (a *app) loginSSH(ctx context.Context, p *client.Profile) {
	if _, err := a.issueSSHCreds(ctx, p); err != nil {
		a.logger().DebugContext(ctx, "No SSH certificate at login.", "error", err)
	}
}

func loadOrCreateSSHKey(files sshFiles) (gossh.Signer, error) {
	if data, err := readSmallFile(files.key); err == nil {
		signer, err := gossh.ParsePrivateKey(data)
		if err == nil {
			return signer, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, trace.Wrap(err)
	}
	if err := os.MkdirAll(files.dir, 0o700); err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "sigil")
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// A new key invalidates a certificate for the old one.
	_ = os.Remove(files.cert)
	if err := client.WriteFileAtomic(files.key, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, trace.Wrap(err)
	}
	return gossh.NewSignerFromKey(priv)
}

func readSmallFile(path string) ([]byte, error) {
	return client.ReadFileLimited(path, maxSSHFile)
}

func loadSSHCreds(files sshFiles) (*sshCreds, error) {
	keyData, err := readSmallFile(files.key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	key, err := gossh.ParsePrivateKey(keyData)
	if err != nil {
		return nil, trace.BadParameter("%s: %v", files.key, err)
	}
	certData, err := readSmallFile(files.cert)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey(certData)
	if err != nil {
		return nil, trace.BadParameter("%s: %v", files.cert, err)
	}
	cert, ok := pub.(*gossh.Certificate)
	if !ok {
		return nil, trace.BadParameter("%s holds no certificate", files.cert)
	}
	signer, err := gossh.NewCertSigner(cert, key)
	if err != nil {
		return nil, trace.BadParameter("%s does not match %s: %v", files.cert, files.key, err)
	}
	khData, err := readSmallFile(files.knownHosts)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cas := parseCertAuthorities(khData)
	if len(cas) == 0 {
		return nil, trace.BadParameter("%s names no @cert-authority", files.knownHosts)
	}
	cluster, err := readSmallFile(files.cluster)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &sshCreds{files: files, signer: signer, cert: cert, hostCAs: cas, cluster: strings.TrimSpace(string(cluster))}, nil
}

// parseCertAuthorities returns the keys of the @cert-authority lines of a
// known_hosts file.
func parseCertAuthorities(data []byte) []gossh.PublicKey {
	var out []gossh.PublicKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[0] != "@cert-authority" {
			continue
		}
		pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(strings.Join(fields[2:], " ")))
		if err == nil {
			out = append(out, pub)
		}
	}
	return out
}

// gatewayHostKey accepts the gateway's host certificate when one of the
// SSH host CAs signed it for host (the gateway's host name or IP).
func (c *sshCreds) gatewayHostKey(host string) gossh.HostKeyCallback {
	return func(_ string, _ net.Addr, key gossh.PublicKey) error {
		cert, ok := key.(*gossh.Certificate)
		if !ok || cert.CertType != gossh.HostCert {
			return trace.AccessDenied("the gateway presented no SSH host certificate; is %s a Sigil gateway?", host)
		}
		trusted := false
		for _, ca := range c.hostCAs {
			if bytes.Equal(ca.Marshal(), cert.SignatureKey.Marshal()) {
				trusted = true
			}
		}
		if !trusted {
			return trace.AccessDenied("the gateway's SSH host certificate is signed by %s, not the SSH host CA of your login; run \"sigil login\" again", gossh.FingerprintSHA256(cert.SignatureKey))
		}
		checker := &gossh.CertChecker{}
		if err := checker.CheckCert(host, cert); err != nil {
			return trace.AccessDenied("the gateway's SSH host certificate is not valid for %s: %v", host, err)
		}
		return nil
	}
}

// clientConfig dials the gateway as user (LOGIN@NODE, or a name without
// "@" for a jump connection). Banners (the gateway's refusals) go to
// banner.
func (c *sshCreds) clientConfig(user, gatewayHost string, banner *strings.Builder, timeout time.Duration) *gossh.ClientConfig {
	return &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(c.signer)},
		HostKeyCallback: c.gatewayHostKey(gatewayHost),
		HostKeyAlgorithms: []string{
			gossh.CertAlgoED25519v01, gossh.CertAlgoECDSA256v01, gossh.CertAlgoRSASHA512v01, gossh.CertAlgoRSASHA256v01,
		},
		BannerCallback: func(msg string) error {
			banner.WriteString(msg)
			return nil
		},
		Timeout: timeout,
	}
}

// dialGateway opens an SSH connection to the gateway of profile p.
func (a *app) dialGateway(ctx context.Context, p *client.Profile, creds *sshCreds, user string) (*gossh.Client, error) {
	host, _, err := net.SplitHostPort(p.Proxy)
	if err != nil {
		return nil, trace.BadParameter("profile gateway address %q is not HOST:PORT", p.Proxy)
	}
	var banner strings.Builder
	cfg := creds.clientConfig(user, host, &banner, a.timeout)
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	nc, err := d.DialContext(dctx, "tcp", p.Proxy)
	if err != nil {
		return nil, trace.ConnectionProblem(err, "cannot reach the gateway at %s: %v (is sigild running there?)", p.Proxy, err)
	}
	_ = nc.SetDeadline(time.Now().Add(a.timeout))
	c, chans, reqs, err := gossh.NewClientConn(nc, p.Proxy, cfg)
	if err != nil {
		nc.Close()
		if msg := strings.TrimSpace(banner.String()); msg != "" {
			return nil, trace.AccessDenied("%s", strings.TrimPrefix(msg, "sigil: "))
		}
		return nil, trace.Wrap(err, "SSH to the gateway at %s", p.Proxy)
	}
	_ = nc.SetDeadline(time.Time{})
	return gossh.NewClient(c, chans, reqs), nil
}
