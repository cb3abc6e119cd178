package main

import (
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/identity/certid"
)

// currentProfile is the profile every command acts as: the identity
// directory given with --identity, else the current login profile.
func (a *app) currentProfile() (*client.Profile, error) {
	if a.identityDir == "" {
		return client.CurrentProfile(client.Home())
	}
	return profileFromIdentityDir(a.identityDir)
}

// profileFromIdentityDir reads an identity directory and describes it as a
// profile; who it is comes from the certificate itself.
func profileFromIdentityDir(dir string) (*client.Profile, error) {
	id, err := client.LoadIdentityDir(dir)
	if err != nil {
		return nil, trace.Wrap(err, "reading the identity in %s (written by \"sigil bot start --dest %s\")", dir, dir)
	}
	who, err := identityOfPEM(id.CertPEM)
	if err != nil {
		return nil, trace.Wrap(err, "the certificate in %s carries no Sigil identity", dir)
	}
	return &client.Profile{
		Proxy:    id.Proxy,
		User:     who.Name,
		Kind:     string(who.Kind),
		Roles:    who.Roles,
		Traits:   who.Traits,
		Expires:  who.Expires,
		Dir:      dir,
		Identity: id,
	}, nil
}

// reloadProfile reads the profile again (for long-running commands): a
// "sigil login" or a bot renewal done meanwhile is picked up.
func (a *app) reloadProfile(home, proxy string) (*client.Profile, error) {
	if a.identityDir != "" {
		return profileFromIdentityDir(a.identityDir)
	}
	return client.LoadProfile(home, proxy)
}

// freshClient reloads the profile (a "sigil login" or a bot renewal done
// meanwhile is picked up) and returns a client authenticated with it.
func (a *app) freshClient(home, proxy string) (*client.Profile, *client.Client, error) {
	p, err := a.reloadProfile(home, proxy)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	if err := a.checkLoginValid(p); err != nil {
		return nil, nil, trace.Wrap(err)
	}
	clt, err := client.NewFromIdentity(p.Identity, a.timeout)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return p, clt, nil
}

// identityOfPEM decodes the Sigil identity of a certificate we were
// issued (the first of certPEM).
func identityOfPEM(certPEM []byte) (*certid.Identity, error) {
	certs, err := client.ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return certid.FromCertificate(certs[0])
}
