package session

import (
	"context"
	"maps"

	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
)

// ProtocolSSH names SSH sessions in audit events.
const ProtocolSSH = "ssh"

// SSHDecision is what policy allows an SSH session beyond the login.
type SSHDecision struct {
	// PortForwarding allows direct-tcpip and tcpip-forward.
	PortForwarding bool
	// AgentForwarding allows auth-agent-req@openssh.com.
	AgentForwarding bool
}

// SSHRequest is what an SSH client asked for.
type SSHRequest struct {
	// ID is the session ID; a fresh UUID when empty. Engines pick it
	// first when other names (a recording) derive from it.
	ID string
	// Node is the node the client named, nil when no registered node has
	// that name or address (Target says what was asked).
	Node   *types.Node
	Target string
	Login  string
	// ClientAddr is the client's host:port.
	ClientAddr string
	// Details are added to ssh.session.start.
	Details map[string]string
}

// StartSSH authorizes an identity an engine proved from an SSH user
// certificate for a login on a node: route, locks, policy (logins with
// trait templates, node labels, require_session_mfa). It records the
// durable ssh.session.start and starts watching locks. A refusal for who
// the client is comes back as *WhoError and is recorded as a failed
// ssh.session.start.
func (m *Manager) StartSSH(ctx context.Context, id *certid.Identity, req SSHRequest) (*Session, error) {
	if id == nil {
		return nil, trace.BadParameter("missing identity")
	}
	if req.ID == "" {
		req.ID = uuid.NewString()
	}
	s, err := m.authorizeSSH(ctx, id, req)
	if err != nil {
		if IsWhoError(err) {
			m.emitSSHDenied(ctx, id, req, err)
		}
		return nil, err
	}
	details := map[string]string{"protocol": ProtocolSSH, "node_addr": s.Node.Spec.Addr}
	maps.Copy(details, req.Details)
	start := &audit.Event{Type: audit.EventSSHSessionStart, Success: true, Details: details}
	if err := s.Emit(ctx, start); err != nil {
		m.log.ErrorContext(ctx, "Refusing session: audit log unavailable.", "user", id.Name, "error", err)
		return nil, trace.ConnectionProblem(err, "the audit log is unavailable, so no session can start; try again later or ask an admin to check sigild")
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go s.watchLocks(watchCtx)
	return s, nil
}

func (m *Manager) authorizeSSH(ctx context.Context, id *certid.Identity, req SSHRequest) (*Session, error) {
	if req.Login == "" {
		return nil, who(nil, "no login given: connect as LOGIN@NODE (sigil ssh LOGIN@NODE, or ssh -J GATEWAY LOGIN@NODE)")
	}
	if req.Node == nil {
		return nil, who(nil, "node %q is not registered with Sigil; see \"sigil ls\"", req.Target)
	}
	name := req.Node.Metadata.Name
	if r := id.Route; !r.IsZero() {
		if r.ResourceKind != types.KindNode || r.ResourceName != name || (r.Login != "" && r.Login != req.Login) {
			return nil, who(nil, "this certificate is bound to %s %q and cannot open SSH sessions to %q; use your login certificate", r.ResourceKind, r.ResourceName, name)
		}
	}
	if err := m.checkLocks(ctx, id); err != nil {
		return nil, err
	}
	checker, until, err := m.checker(ctx, id, types.KindNode, name)
	if err != nil {
		return nil, err
	}
	if err := checker.CheckLogin(req.Node, req.Login); err != nil {
		if trace.IsAccessDenied(err) {
			return nil, &WhoError{Message: trace.UserMessage(err), Err: err}
		}
		return nil, trace.Wrap(err)
	}
	// Fail closed, as for databases: per-session MFA is proved by a
	// certificate carrying a verified MFA device.
	if role := checker.SessionMFARole(); role != "" && id.MFADevice == "" {
		return nil, who(nil, "role %q requires a per-session MFA check (require_session_mfa) and this certificate carries none; SSH sessions with per-session MFA are not supported yet, ask an admin for a role without it", role)
	}
	return &Session{
		ID:         req.ID,
		Identity:   id,
		Node:       req.Node,
		Login:      req.Login,
		SSH:        &SSHDecision{PortForwarding: checker.SSHPortForwarding(), AgentForwarding: checker.SSHAgentForwarding()},
		ClientAddr: req.ClientAddr,
		Protocol:   ProtocolSSH,
		Started:    m.cfg.Clock(),
		endType:    audit.EventSSHSessionEnd,
		m:          m,
		done:       make(chan struct{}),
		auditID:    audit.IdentityOf(id),
		auditRes:   &audit.Resource{Kind: types.KindNode, Name: name, Login: req.Login},
		until:      until,
	}, nil
}

// emitSSHDenied records a refused SSH session as a failed
// ssh.session.start; the refusal stands whether or not it is stored.
func (m *Manager) emitSSHDenied(ctx context.Context, id *certid.Identity, req SSHRequest, refusal error) {
	name := req.Target
	if req.Node != nil {
		name = req.Node.Metadata.Name
	}
	ev := &audit.Event{
		Type:       audit.EventSSHSessionStart,
		SessionId:  req.ID,
		Identity:   audit.IdentityOf(id),
		Resource:   &audit.Resource{Kind: types.KindNode, Name: name, Login: req.Login},
		ClientAddr: req.ClientAddr,
		Error:      Message(refusal),
		Details:    map[string]string{"protocol": ProtocolSSH},
	}
	if err := m.cfg.Emitter.Emit(ctx, ev); err != nil {
		m.log.WarnContext(ctx, "Recording a refused connection failed.", "user", id.Name, "error", err)
	}
}

// CheckLocks refuses (with a *WhoError) an identity under a lock. Engines
// call it for connections that carry no session yet, such as an SSH jump
// connection.
func (m *Manager) CheckLocks(ctx context.Context, id *certid.Identity) error {
	return m.checkLocks(ctx, id)
}
