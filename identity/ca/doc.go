// Package ca keeps Sigil's certificate authorities in storage, with their
// private keys sealed at rest by a Sealer whose key lives outside storage,
// and signs X.509 and SSH certificates with them.
package ca
