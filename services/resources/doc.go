// Package resources keeps every YAML-shaped resource (roles, users,
// databases, tokens, locks, ...) in a storage.Backend as its JSON document,
// under /resources/<kind>/<name>. It is the one place that maps
// api/types resources to storage items; the per-kind services build on it.
package resources
