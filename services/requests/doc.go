// Package requests stores access requests: time-boxed roles a person
// asks for and reviewers approve. It applies the rules (who may request
// and review what, distinct approvals, one denial denies, no
// self-review, expiry) and resolves which requested roles a certificate
// may use for a resource; the API and the gateway call it.
package requests
