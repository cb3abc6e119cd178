// Package client is the typed Go client of the Sigil API.
//
// It bundles the generated Connect clients behind one mTLS HTTP client and
// owns the on-disk formats every client shares: identity directories (a
// client certificate, its key, the CA that verifies the gateway and the
// gateway address), user profiles under $SIGIL_HOME and the known_cas file
// that pins gateway CAs on first contact, like ssh's known_hosts.
//
// It deliberately depends only on small modules so that the Terraform
// provider, bots and agents can import it.
package client
