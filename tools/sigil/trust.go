package main

import (
	"context"
	"crypto/subtle"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
)

// trustOptions says how the user asked to trust a gateway's CA.
type trustOptions struct {
	proxy string
	// caFile is an explicit CA bundle (from "sigilctl auth export --type tls-ca").
	caFile string
	// fingerprint, when set, is the fingerprint the user expects; it
	// replaces the interactive question.
	fingerprint string
}

// maxCAFileSize bounds --ca-file.
const maxCAFileSize = 1 << 20

// resolveCA returns the CA bundle to verify the gateway with and pins its
// fingerprint in known_cas. Like ssh's known_hosts: an explicit file is
// trusted, a known gateway must present the same CA as before, and an
// unknown one is shown to the user, who decides.
func (a *app) resolveCA(ctx context.Context, home string, opts trustOptions) ([]byte, error) {
	known := client.NewKnownCAs(home)
	if opts.caFile != "" {
		caPEM, err := readCAFile(opts.caFile)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		certs, err := client.ParseCertificatesPEM(caPEM)
		if err != nil {
			return nil, trace.BadParameter("--ca-file %s: %v", opts.caFile, err)
		}
		fp := client.Fingerprint(certs[0].Raw)
		a.logger().DebugContext(ctx, "Trusting CA from file.", "file", opts.caFile, "fingerprint", fp)
		if err := known.Add(opts.proxy, fp); err != nil {
			return nil, trace.Wrap(err)
		}
		return caPEM, nil
	}

	caPEM, fp, err := client.FetchCA(ctx, opts.proxy, a.timeout)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	a.logger().DebugContext(ctx, "Fetched gateway CA.", "proxy", opts.proxy, "fingerprint", fp)
	pinned, ok, err := known.Lookup(opts.proxy)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if ok {
		if !sameFingerprint(pinned, fp) {
			fmt.Fprintf(a.stderr, `WARNING: the CA of %s has CHANGED!
  known:     %s
  presented: %s
Someone may be intercepting your connection, or the cluster CA was replaced.
Refusing to continue; if this is expected remove the line from %s
(or log in with --ca-file from "sigilctl auth export --type tls-ca").
`, opts.proxy, pinned, fp, known.Path)
			return nil, trace.CompareFailed("the CA of %s does not match the one pinned in %s", opts.proxy, known.Path)
		}
		return caPEM, nil
	}

	if opts.fingerprint != "" {
		if !sameFingerprint(opts.fingerprint, fp) {
			return nil, trace.CompareFailed("the gateway %s presents CA fingerprint %s, not the expected %s; refusing to continue", opts.proxy, fp, opts.fingerprint)
		}
	} else {
		fmt.Fprintf(a.stderr, "The gateway %s presents CA fingerprint %s\n", opts.proxy, fp)
		if err := a.confirmTrust(opts.proxy); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if err := known.Add(opts.proxy, fp); err != nil {
		return nil, trace.Wrap(err)
	}
	return caPEM, nil
}

// confirmTrust asks on the terminal; no terminal means no.
func (a *app) confirmTrust(proxy string) error {
	tty, err := a.openTerminal()
	if err != nil {
		return trace.AccessDenied("cannot ask whether to trust the CA of %s: no terminal. Get the CA from an admin "+
			"(\"sigilctl auth export --type tls-ca > sigil-ca.pem\") and pass --ca-file sigil-ca.pem, "+
			"or pass the fingerprint you expect with --ca-fingerprint", proxy)
	}
	defer tty.Close()
	answer, err := tty.ReadLine("Trust it? [y/N] ")
	if err != nil {
		return trace.Wrap(err)
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return trace.AccessDenied("the CA of %s was not trusted; nothing was changed", proxy)
}

// sameFingerprint compares fingerprints case-insensitively (users paste
// them from anywhere) in constant time.
func sameFingerprint(a, b string) bool {
	a, b = strings.ToUpper(strings.TrimSpace(a)), strings.ToUpper(strings.TrimSpace(b))
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func readCAFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, trace.BadParameter("cannot read --ca-file: %v", err)
	}
	if st.Size() > maxCAFileSize {
		return nil, trace.LimitExceeded("--ca-file %s is larger than %d bytes; is it really a CA certificate?", path, maxCAFileSize)
	}
	data, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		return nil, trace.BadParameter("cannot read --ca-file: %v", err)
	}
	return data, nil
}
