package apiserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/recording"
	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/services/resources"
)

const (
	// defaultSSHHostCertTTL: node host certificates live until an admin
	// re-signs, like database server certificates.
	defaultSSHHostCertTTL = 365 * 24 * time.Hour
	maxSSHHosts           = 32
	// minSSHCertTTL bounds how short an SSH user certificate may be asked
	// for.
	minSSHCertTTL = time.Second
	// recordingChunk is the size of each GetRecording message.
	recordingChunk = 64 << 10
)

type sshService struct{ s *Server }

func (h *sshService) ListNodes(ctx context.Context, _ *connect.Request[sigilv1.ListNodesRequest]) (*connect.Response[sigilv1.ListNodesResponse], error) {
	s := h.s
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	nodes, err := resources.List[*types.Node](ctx, s.cfg.Resources, types.KindNode)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp := &sigilv1.ListNodesResponse{}
	for _, n := range nodes {
		visible, logins, err := checker.NodeAccess(n)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if !visible {
			continue
		}
		resp.Nodes = append(resp.Nodes, &sigilv1.NodeInfo{
			Name:        n.Metadata.Name,
			Addr:        n.Spec.Addr,
			Labels:      n.Metadata.Labels,
			Description: n.Metadata.Description,
			Logins:      logins,
		})
	}
	sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].Name < resp.Nodes[j].Name })
	return connect.NewResponse(resp), nil
}

// knownHostsLine trusts the SSH host CA for every host, for a
// known_hosts file used only with the gateway and its nodes.
func (s *Server) knownHostsLine() []byte {
	return append([]byte("@cert-authority * "), ssh.MarshalAuthorizedKey(s.cfg.Authority.SSHPublicKey(ca.SSHHostCA))...)
}

func (h *sshService) GenerateSSHCert(ctx context.Context, req *connect.Request[sigilv1.GenerateSSHCertRequest]) (*connect.Response[sigilv1.GenerateSSHCertResponse], error) {
	s := h.s
	m := req.Msg
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !id.Route.IsZero() {
		return nil, trace.AccessDenied("a routed certificate cannot issue other certificates; use your login certificate")
	}
	if len(m.SshPublicKey) == 0 || len(m.SshPublicKey) > 8192 {
		return nil, trace.BadParameter("ssh_public_key: give one authorized_keys line")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(m.SshPublicKey)
	if err != nil {
		return nil, trace.BadParameter("ssh_public_key: not an authorized_keys line: %v", err)
	}
	if _, isCert := pub.(*ssh.Certificate); isCert {
		return nil, trace.BadParameter("ssh_public_key: give a public key, not a certificate")
	}
	ttl := time.Until(id.Expires)
	if ttl < minSSHCertTTL {
		return nil, trace.AccessDenied("your login certificate has expired: run \"sigil login\" again")
	}
	if m.TtlSeconds < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	if want := time.Duration(m.TtlSeconds) * time.Second; want > 0 && want < ttl {
		ttl = max(want, minSSHCertTTL)
	}
	issued := *id
	cert, err := s.cfg.Authority.SignSSHUserCert(&issued, pub, ttl)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.emit(ctx, &audit.Event{
		Type:     audit.EventCertIssued,
		Identity: audit.IdentityOf(&issued),
		Success:  true,
		Details:  map[string]string{"purpose": "ssh", "expires": issued.Expires.UTC().Format(time.RFC3339)},
	}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.GenerateSSHCertResponse{
		SshCert:     ssh.MarshalAuthorizedKey(cert),
		KnownHosts:  s.knownHostsLine(),
		Expires:     timestamppb.New(issued.Expires),
		ClusterName: s.cfg.ClusterName,
	}), nil
}

func (h *sshService) SignSSHHost(ctx context.Context, req *connect.Request[sigilv1.SignSSHHostRequest]) (*connect.Response[sigilv1.SignSSHHostResponse], error) {
	s := h.s
	m := req.Msg
	id, err := s.authorize(ctx, types.KindNode, types.VerbCreate)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(m.Hosts) == 0 || len(m.Hosts) > maxSSHHosts {
		return nil, trace.BadParameter("--host: give 1 to %d names the node is reached by, its node name first", maxSSHHosts)
	}
	for _, host := range m.Hosts {
		if host == "" || len(host) > 253 || strings.ContainsAny(host, " \t\r\n,*?") {
			return nil, trace.BadParameter("--host: %q is not a host name, IP address or node name", host)
		}
	}
	ttl := time.Duration(m.TtlSeconds) * time.Second
	if ttl < 0 {
		return nil, trace.BadParameter("--ttl must be positive")
	}
	if ttl == 0 {
		ttl = defaultSSHHostCertTTL
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cert, err := s.cfg.Authority.SignSSHHostCert(sshPub, m.Hosts[0], m.Hosts[1:], ttl)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "sigil host key for "+m.Hosts[0])
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.emit(ctx, &audit.Event{
		Type:     audit.EventCertIssued,
		Identity: audit.IdentityOf(id),
		Resource: &audit.Resource{Kind: types.KindNode, Name: m.Hosts[0]},
		Success:  true,
		Details:  map[string]string{"purpose": "ssh host", "principals": strings.Join(cert.ValidPrincipals, ",")},
	}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.SignSSHHostResponse{
		HostKey:       pem.EncodeToMemory(block),
		HostPublicKey: ssh.MarshalAuthorizedKey(sshPub),
		HostCert:      ssh.MarshalAuthorizedKey(cert),
		UserCa:        ssh.MarshalAuthorizedKey(s.cfg.Authority.SSHPublicKey(ca.SSHUserCA)),
	}), nil
}

func (h *sshService) GetRecording(ctx context.Context, req *connect.Request[sigilv1.GetRecordingRequest], stream *connect.ServerStream[sigilv1.GetRecordingResponse]) error {
	s := h.s
	f, err := s.openRecording(ctx, req.Msg.SessionId)
	if err != nil {
		return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
	}
	defer f.Close()
	buf := make([]byte, recordingChunk)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if serr := stream.Send(&sigilv1.GetRecordingResponse{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return toConnect(ctx, s.cfg.Logger, trace.ConvertSystemError(err))
		}
	}
}

// openRecording authorizes the caller for a recording (their own session,
// or a rule allowing "read" on "recordings") and opens it.
func (s *Server) openRecording(ctx context.Context, recID string) (*os.File, error) {
	if s.cfg.RecordingsDir == "" || s.cfg.AuditStore == nil {
		return nil, trace.NotImplemented("this gateway keeps no session recordings")
	}
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	path, err := recording.Path(s.cfg.RecordingsDir, recID)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	notFound := trace.NotFound("no recording of session %s; find session IDs with \"sigilctl audit search --type ssh.session.start\"", recID)
	// The session's start event says whose it is: the recording file
	// itself is only bytes.
	sessionID := recID[:36]
	ok := true
	events, _, err := s.cfg.AuditStore.Search(ctx, store.Query{SessionID: sessionID, Types: []string{audit.EventSSHSessionStart}, Success: &ok, Limit: 1})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(events) == 0 {
		return nil, notFound
	}
	owner := events[0].GetIdentity().GetUser()
	if owner != id.Name && checker.CheckRule(types.RuleResourceRecordings, types.VerbRead) != nil {
		return nil, trace.AccessDenied("you may replay only your own sessions; replaying others' needs a role rule allowing \"read\" on \"recordings\"")
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, trace.NotFound("session %s has no recording (only interactive sessions with a terminal are recorded)", recID)
		}
		return nil, trace.ConvertSystemError(err)
	}
	return f, nil
}
