// Package approvals stores write approvals: a write an AI agent tried to
// run where a role says write_approval: true waits here until a human
// approves or denies it. An approval is bound to the agent, the database
// and the statement's fingerprint, and once approved lets that statement
// run once within UseWindow. The gateway asks for and consumes approvals
// (Use); the API lists and reviews them and emits the audit events.
package approvals
