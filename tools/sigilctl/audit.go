package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// parseWhen accepts a duration back from now ("1h", "7d") or an RFC 3339 time.
func parseWhen(flag, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := types.ParseDuration(s); err == nil {
		return timestamppb.New(now.Add(-d.Duration())), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, trace.BadParameter("--%s: %q is neither a duration (1h, 7d) nor an RFC 3339 time (2026-11-23T08:00:00Z)", flag, s)
	}
	return timestamppb.New(t), nil
}

func (e *env) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Search, verify and export the audit log"}
	var (
		since, until, user, kind, resource, session, success string
		eventTypes                                           []string
		limit                                                int
	)
	search := &cobra.Command{
		Use:   "search [--since 1h] [--until T] [--user U] [--kind human|bot|agent] [--type T] [--resource R]",
		Short: "Search audit events, newest first",
		Long: `Search audit events, newest first. Times are durations back from now (1h, 7d)
or RFC 3339 times. Without a role rule allowing "list" on "audit" you see only
your own events.`,
		Example: `  sigilctl audit search --since 1h
  sigilctl audit search --user alice --type db.query --since 7d --format json
  sigilctl audit search --success false --type user.login`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			now := time.Now()
			req := &sigilv1.SearchAuditRequest{User: user, Kind: kind, Types: eventTypes, Resource: resource, SessionId: session, Success: success}
			var err error
			if req.Since, err = parseWhen("since", since, now); err != nil {
				return trace.Wrap(err)
			}
			if req.Until, err = parseWhen("until", until, now); err != nil {
				return trace.Wrap(err)
			}
			if limit <= 0 {
				return trace.BadParameter("--limit must be positive")
			}
			switch success {
			case "", "true", "false":
			default:
				return trace.BadParameter("--success: %q is not one of true, false", success)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			var events []*sigilv1.AuditEvent
			for len(events) < limit {
				req.Limit = int32(min(limit-len(events), 1000))
				resp, err := clt.Audit.Search(c.Context(), connect.NewRequest(req))
				if err != nil {
					return trace.Wrap(err)
				}
				events = append(events, resp.Msg.Events...)
				if resp.Msg.NextPageToken == "" {
					break
				}
				req.PageToken = resp.Msg.NextPageToken
			}
			return e.printEvents(events)
		},
	}
	f := search.Flags()
	f.StringVar(&since, "since", "", "oldest event time: a duration back from now (1h, 7d) or an RFC 3339 time")
	f.StringVar(&until, "until", "", "newest event time (same forms as --since)")
	f.StringVar(&user, "user", "", "only events of this user, bot or agent")
	f.StringVar(&kind, "kind", "", "only this identity kind: human, bot or agent")
	f.StringSliceVar(&eventTypes, "type", nil, "only these event types (repeat or comma-separate), e.g. db.query,user.login")
	f.StringVar(&resource, "resource", "", "only events on this resource name")
	f.StringVar(&session, "session", "", "only events of this session id")
	f.StringVar(&success, "success", "", "only successful (true) or failed (false) events")
	f.IntVar(&limit, "limit", 100, "at most this many events")

	var out string
	export := &cobra.Command{
		Use:     "export --out FILE.jsonl [--since 7d]",
		Short:   "Export the audit log as JSON lines (oldest first)",
		Example: "  sigilctl audit export --out audit.jsonl\n  sigilctl audit export --out last-week.jsonl --since 7d",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return trace.BadParameter("--out FILE is required")
			}
			req := &sigilv1.ExportAuditRequest{}
			var err error
			if req.Since, err = parseWhen("since", since, time.Now()); err != nil {
				return trace.Wrap(err)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			// Write to a temp file beside the target and rename at the end:
			// an interrupted export never leaves a partial file behind.
			tmp, err := os.CreateTemp(filepath.Dir(out), ".audit-export-*")
			if err != nil {
				return trace.ConvertSystemError(err)
			}
			defer os.Remove(tmp.Name())
			defer tmp.Close()
			stream, err := clt.Audit.Export(c.Context(), connect.NewRequest(req))
			if err != nil {
				return trace.Wrap(err)
			}
			n := 0
			for stream.Receive() {
				ev := stream.Msg().Event
				if ev == nil {
					continue
				}
				line, err := audit.MarshalJSONLine(ev)
				if err != nil {
					return trace.Wrap(err)
				}
				if _, err := tmp.Write(line); err != nil {
					return trace.ConvertSystemError(err)
				}
				n++
				if n%100000 == 0 {
					fmt.Fprintf(e.stderr, "exported %d events...\n", n)
				}
			}
			if err := stream.Err(); err != nil {
				return trace.Wrap(err)
			}
			if err := tmp.Sync(); err != nil {
				return trace.ConvertSystemError(err)
			}
			if err := tmp.Close(); err != nil {
				return trace.ConvertSystemError(err)
			}
			if err := os.Chmod(tmp.Name(), 0o600); err != nil {
				return trace.ConvertSystemError(err)
			}
			if err := os.Rename(tmp.Name(), out); err != nil {
				return trace.ConvertSystemError(err)
			}
			fmt.Fprintf(e.stdout, "Exported %d events to %s\n", n, out)
			return nil
		},
	}
	export.Flags().StringVar(&out, "out", "", "file to write (JSON lines, one event per line)")
	export.Flags().StringVar(&since, "since", "", "only events newer than this (1h, 7d, or an RFC 3339 time)")

	verify := &cobra.Command{
		Use:   "verify",
		Short: "Walk the whole hash chain; exit 1 at the first broken event",
		Long: `Download the audit log and check, on this machine, that every event's hash
matches its content and links to the previous one, with no missing sequence
numbers; when retention pruned old events, the chain must start at the
checkpoint signed by the cluster's audit key. The first bad sequence number
is printed and the command exits 1.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			keyResp, err := clt.Audit.PublicKey(c.Context(), connect.NewRequest(&sigilv1.AuditPublicKeyRequest{}))
			if err != nil {
				return trace.Wrap(err)
			}
			v, err := audit.NewVerifier(keyResp.Msg.PublicKey)
			if err != nil {
				return trace.Wrap(err)
			}
			stream, err := clt.Audit.Export(c.Context(), connect.NewRequest(&sigilv1.ExportAuditRequest{}))
			if err != nil {
				return trace.Wrap(err)
			}
			for stream.Receive() {
				msg := stream.Msg()
				if msg.Checkpoint != nil {
					if err := v.Checkpoint(msg.Checkpoint); err != nil {
						return trace.Wrap(err)
					}
				}
				if msg.Event != nil {
					if err := v.Add(msg.Event); err != nil {
						return trace.Wrap(err)
					}
				}
			}
			if err := stream.Err(); err != nil {
				return trace.Wrap(err)
			}
			res, err := v.Done()
			if err != nil {
				return trace.Wrap(err)
			}
			fmt.Fprintf(e.stdout, "Audit chain OK: %s\n", res)
			return nil
		},
	}
	cmd.AddCommand(search, export, verify)
	return cmd
}

func (e *env) printEvents(events []*sigilv1.AuditEvent) error {
	switch e.format {
	case cli.FormatJSON:
		// One JSON array of events in their canonical JSON form.
		if _, err := io.WriteString(e.stdout, "["); err != nil {
			return trace.Wrap(err)
		}
		for i, ev := range events {
			line, err := audit.MarshalJSONLine(ev)
			if err != nil {
				return trace.Wrap(err)
			}
			if i > 0 {
				io.WriteString(e.stdout, ",")
			}
			e.stdout.Write([]byte(strings.TrimSpace(string(line))))
		}
		_, err := io.WriteString(e.stdout, "]\n")
		return trace.Wrap(err)
	case cli.FormatYAML:
		return trace.BadParameter("--format yaml is not supported for audit events; use json")
	}
	if len(events) == 0 {
		fmt.Fprintln(e.stdout, "No events.")
		return nil
	}
	rows := make([][]string, 0, len(events))
	for _, ev := range events {
		res := ev.GetResource().GetName()
		if k := ev.GetResource().GetKind(); k != "" && res != "" {
			res = k + "/" + res
		}
		status := "ok"
		if !ev.Success {
			status = "FAILED"
			if ev.Error != "" {
				status += ": " + ev.Error
			}
		}
		rows = append(rows, []string{
			ev.Time.AsTime().UTC().Format(time.RFC3339),
			strconv.FormatUint(ev.Seq, 10),
			ev.Type,
			ev.GetIdentity().GetUser(),
			ev.GetIdentity().GetKind(),
			res,
			cli.OneLine(status, 50),
			cli.OneLine(ev.Statement, 60),
		})
	}
	return cli.Table(e.stdout, []string{"TIME", "SEQ", "TYPE", "USER", "KIND", "RESOURCE", "RESULT", "STATEMENT"}, rows)
}
