package apiserver

import (
	"context"
	"strconv"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/identity/certid"
)

const (
	// exportBatch is how many events Export and Watch read per store call.
	exportBatch    = 1000
	maxSearchLimit = 1000
)

type auditService struct{ s *Server }

// auditReader authenticates the caller and says whether they may read
// everyone's events (rule "list" on "audit") or only their own.
func (s *Server) auditReader(ctx context.Context) (*certid.Identity, bool, error) {
	if s.cfg.AuditStore == nil {
		return nil, false, trace.NotImplemented("this gateway has no audit store")
	}
	id, err := s.caller(ctx)
	if err != nil {
		return nil, false, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, false, trace.Wrap(err)
	}
	return id, checker.CheckRule(types.RuleResourceAudit, types.VerbList) == nil, nil
}

func (h *auditService) Search(ctx context.Context, req *connect.Request[sigilv1.SearchAuditRequest]) (*connect.Response[sigilv1.SearchAuditResponse], error) {
	s := h.s
	id, all, err := s.auditReader(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	q := store.Query{
		User:      m.User,
		Kind:      m.Kind,
		Types:     m.Types,
		Resource:  m.Resource,
		SessionID: m.SessionId,
		Limit:     int(m.Limit),
		PageToken: m.PageToken,
	}
	if m.Since != nil {
		q.Since = m.Since.AsTime()
	}
	if m.Until != nil {
		q.Until = m.Until.AsTime()
	}
	if q.Limit < 0 || q.Limit > maxSearchLimit {
		return nil, trace.BadParameter("limit must be between 1 and %d", maxSearchLimit)
	}
	switch m.Success {
	case "":
	case "true", "false":
		b, _ := strconv.ParseBool(m.Success)
		q.Success = &b
	default:
		return nil, trace.BadParameter("success: %q is not one of true, false", m.Success)
	}
	if !all {
		if q.User != "" && q.User != id.Name {
			return nil, trace.AccessDenied("you may only read your own audit events; reading %q's needs a role rule allowing \"list\" on \"audit\"", q.User)
		}
		q.User = id.Name
	}
	events, next, err := s.cfg.AuditStore.Search(ctx, q)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.SearchAuditResponse{Events: events, NextPageToken: next}), nil
}

func (h *auditService) Export(ctx context.Context, req *connect.Request[sigilv1.ExportAuditRequest], stream *connect.ServerStream[sigilv1.ExportAuditResponse]) error {
	s := h.s
	_, all, err := s.auditReader(ctx)
	if err != nil {
		return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
	}
	if !all {
		return toConnect(ctx, s.cfg.Logger, trace.AccessDenied("exporting the audit log needs a role rule allowing \"list\" on \"audit\""))
	}
	st := s.cfg.AuditStore
	from := req.Msg.FromSeq
	if from == 0 {
		from = 1
	}
	cp, err := st.Checkpoint(ctx)
	if err != nil {
		return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
	}
	if cp != nil && from <= cp.Seq+1 {
		if err := stream.Send(&sigilv1.ExportAuditResponse{Checkpoint: cp}); err != nil {
			return err
		}
		from = cp.Seq + 1
	}
	// A snapshot: events appended while exporting belong to the next export.
	last := st.LastSeq()
	for from <= last {
		events, err := st.Range(ctx, from, exportBatch)
		if err != nil {
			return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
		}
		if len(events) == 0 {
			break
		}
		for _, ev := range events {
			if ev.Seq > last {
				return nil
			}
			if req.Msg.Since != nil && ev.Time.AsTime().Before(req.Msg.Since.AsTime()) {
				continue
			}
			if err := stream.Send(&sigilv1.ExportAuditResponse{Event: ev}); err != nil {
				return err
			}
		}
		from = events[len(events)-1].Seq + 1
	}
	return nil
}

func (h *auditService) Watch(ctx context.Context, req *connect.Request[sigilv1.WatchAuditRequest], stream *connect.ServerStream[sigilv1.WatchAuditResponse]) error {
	s := h.s
	id, all, err := s.auditReader(ctx)
	if err != nil {
		return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
	}
	user := req.Msg.User
	if !all {
		if user != "" && user != id.Name {
			return toConnect(ctx, s.cfg.Logger, trace.AccessDenied("you may only watch your own audit events"))
		}
		user = id.Name
	}
	types := map[string]bool{}
	for _, t := range req.Msg.Types {
		types[t] = true
	}
	st := s.cfg.AuditStore
	notify := st.Notify(ctx)
	next := st.LastSeq() + 1
	// An empty first message tells the client the watch is live (and gets
	// the response headers out, so the client's call returns at once).
	if err := stream.Send(&sigilv1.WatchAuditResponse{}); err != nil {
		return err
	}
	for {
		for {
			events, err := st.Range(ctx, next, exportBatch)
			if err != nil {
				return toConnect(ctx, s.cfg.Logger, trace.Wrap(err))
			}
			if len(events) == 0 {
				break
			}
			for _, ev := range events {
				next = ev.Seq + 1
				if user != "" && ev.GetIdentity().GetUser() != user {
					continue
				}
				if len(types) > 0 && !types[ev.Type] {
					continue
				}
				if err := stream.Send(&sigilv1.WatchAuditResponse{Event: ev}); err != nil {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-notify:
			if !ok {
				return nil
			}
		}
	}
}

func (h *auditService) PublicKey(ctx context.Context, _ *connect.Request[sigilv1.AuditPublicKeyRequest]) (*connect.Response[sigilv1.AuditPublicKeyResponse], error) {
	return connect.NewResponse(&sigilv1.AuditPublicKeyResponse{PublicKey: h.s.cfg.AuditPublicKey}), nil
}
