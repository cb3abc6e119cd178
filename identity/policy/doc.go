// Package policy decides what an identity may do, given its roles and traits:
// which databases and db users/names, which SSH logins, which admin API verbs.
// Deny always wins over allow and an empty label selector matches nothing, so
// a missing or half-written role fails closed. Refusals are trace.AccessDenied
// with a message naming the rule, because they are shown to users verbatim.
package policy
