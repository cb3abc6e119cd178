package apiserver

import (
	"context"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/bots"
)

// DefaultBotCertTTL is the lifetime of a bot's or agent's certificate
// unless it asks for less or a role says less: short, since renewing is
// cheap and a leaked certificate should be worth little.
const DefaultBotCertTTL = time.Hour

type joinService struct{ s *Server }

func (h *joinService) bots() (*bots.Service, error) {
	if h.s.cfg.Bots == nil {
		return nil, trace.NotImplemented("this gateway does not join bots or agents")
	}
	return h.s.cfg.Bots, nil
}

// botTTL clamps a requested certificate lifetime to the default.
func botTTL(seconds int64) (int64, error) {
	if seconds < 0 {
		return 0, trace.BadParameter("ttl must be positive")
	}
	max := int64(DefaultBotCertTTL / time.Second)
	if seconds == 0 || seconds > max {
		return max, nil
	}
	if seconds < int64(minDBCertTTL/time.Second)*3 {
		return 0, trace.BadParameter("ttl must be at least %s", 3*minDBCertTTL)
	}
	return seconds, nil
}

func (h *joinService) Join(ctx context.Context, req *connect.Request[sigilv1.JoinRequest]) (*connect.Response[sigilv1.LoginResponse], error) {
	s := h.s
	svc, err := h.bots()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// Tokens are 256-bit secrets: the limit is against hammering, per
	// address.
	if err := s.cfg.Limiter.Allow("", peerAddr(req.Peer().Addr)); err != nil {
		return nil, trace.Wrap(err)
	}
	pub, err := parseTLSPublicKey(req.Msg.TlsPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	ttl, err := botTTL(req.Msg.TtlSeconds)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	b, err := svc.Join(ctx, req.Msg.Token)
	if err != nil {
		_ = s.emit(ctx, &audit.Event{
			Type:       audit.EventJoin,
			ClientAddr: req.Peer().Addr,
			Error:      trace.UserMessage(err),
		})
		return nil, trace.Wrap(err)
	}
	resp, err := s.issueLogin(ctx, loginGrant{
		id:         h.identity(b, req.Peer().Addr),
		tlsPub:     pub,
		ttlSeconds: ttl,
		clientAddr: req.Peer().Addr,
		details:    map[string]string{"method": "token", "generation": "1"},
		event:      audit.EventJoin,
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(resp), nil
}

func (h *joinService) identity(b *bots.Bot, addr string) *certid.Identity {
	id := b.Identity()
	id.ClientIP = peerAddr(addr)
	return id
}

func (h *joinService) RenewBotCert(ctx context.Context, req *connect.Request[sigilv1.RenewBotCertRequest]) (*connect.Response[sigilv1.LoginResponse], error) {
	s := h.s
	svc, err := h.bots()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	pub, err := parseTLSPublicKey(req.Msg.TlsPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	ttl, err := botTTL(req.Msg.TtlSeconds)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	b, err := svc.Renew(ctx, caller)
	if err != nil {
		_ = s.emit(ctx, &audit.Event{
			Type:       audit.EventJoin,
			Identity:   audit.IdentityOf(caller),
			ClientAddr: req.Peer().Addr,
			Error:      trace.UserMessage(err),
			Details:    map[string]string{"method": "renew", "generation": strconv.FormatUint(caller.Generation, 10)},
		})
		return nil, trace.Wrap(err)
	}
	resp, err := s.issueLogin(ctx, loginGrant{
		id:         h.identity(b, req.Peer().Addr),
		tlsPub:     pub,
		ttlSeconds: ttl,
		clientAddr: req.Peer().Addr,
		details:    map[string]string{"method": "renew", "generation": strconv.FormatUint(b.Generation, 10)},
		event:      audit.EventJoin,
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(resp), nil
}

func (h *joinService) ListBots(ctx context.Context, _ *connect.Request[sigilv1.ListBotsRequest]) (*connect.Response[sigilv1.ListBotsResponse], error) {
	svc, err := h.bots()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := h.s.authorize(ctx, types.KindToken, types.VerbList); err != nil {
		return nil, trace.Wrap(err)
	}
	list, err := svc.List(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := &sigilv1.ListBotsResponse{}
	for _, b := range list {
		pb := &sigilv1.Bot{
			Name:       b.Name,
			Kind:       b.Kind,
			Roles:      b.Roles,
			OnBehalfOf: b.OnBehalfOf,
			Generation: b.Generation,
			Joined:     timestamppb.New(b.Joined),
		}
		if !b.Renewed.IsZero() {
			pb.Renewed = timestamppb.New(b.Renewed)
		}
		out.Bots = append(out.Bots, pb)
	}
	return connect.NewResponse(out), nil
}

func (h *joinService) RemoveBot(ctx context.Context, req *connect.Request[sigilv1.RemoveBotRequest]) (*connect.Response[sigilv1.RemoveBotResponse], error) {
	svc, err := h.bots()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id, err := h.s.authorize(ctx, types.KindToken, types.VerbDelete)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := svc.Remove(ctx, req.Msg.Name); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := h.s.resourceChanged(ctx, id, "bot", req.Msg.Name, "removed"); err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.RemoveBotResponse{}), nil
}
