// Package apiserver serves the Connect RPC API on the gateway's HTTPS
// listener: it authenticates callers by client certificate (certid),
// refuses locked identities, checks admin verbs against role rules, and
// composes the services (users, resources, locks, CAs) behind each call.
package apiserver
