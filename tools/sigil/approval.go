package main

import (
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// statementColumn bounds the statement in the approval table; "show"
// prints it whole.
const statementColumn = 48

func (a *app) approvalCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approval",
		Short: "Review the writes AI agents ask to run",
		Long: `Where a role says write_approval: true, the gateway refuses each write an
agent runs with an error naming an approval id. A person reviews it: the person
the agent acts for, or someone whose role allows "update" on "approvals". Once
approved, the same statement from the same agent on the same database runs
once within 15 minutes; a denial is final. Pending approvals expire after an
hour.

Agents see their own approvals; people see those of agents acting for them.
The web console lists them too, under "Agent writes".`,
		Example: `  sigil approval ls --state pending
  sigil approval show 6f1c...
  sigil approval review 6f1c... --approve --reason "ticket 42"
  sigil approval review 6f1c... --deny --reason "not on production"`,
	}
	cmd.AddCommand(a.approvalLsCommand(), a.approvalShowCommand(), a.approvalReviewCommand())
	return cmd
}

// approvalView is a write approval as sigil prints it.
type approvalView struct {
	ID          string     `json:"id" yaml:"id"`
	Agent       string     `json:"agent" yaml:"agent"`
	AgentKind   string     `json:"agent_kind" yaml:"agent_kind"`
	OnBehalfOf  string     `json:"on_behalf_of,omitempty" yaml:"on_behalf_of,omitempty"`
	Database    string     `json:"database" yaml:"database"`
	DBUser      string     `json:"db_user,omitempty" yaml:"db_user,omitempty"`
	DBName      string     `json:"db_name,omitempty" yaml:"db_name,omitempty"`
	Statement   string     `json:"statement" yaml:"statement"`
	Class       string     `json:"class,omitempty" yaml:"class,omitempty"`
	State       string     `json:"state" yaml:"state"`
	Created     time.Time  `json:"created" yaml:"created"`
	Expires     time.Time  `json:"expires" yaml:"expires"`
	Reviewer    string     `json:"reviewer,omitempty" yaml:"reviewer,omitempty"`
	Reason      string     `json:"reason,omitempty" yaml:"reason,omitempty"`
	ReviewTime  *time.Time `json:"review_time,omitempty" yaml:"review_time,omitempty"`
	UsedAt      *time.Time `json:"used_at,omitempty" yaml:"used_at,omitempty"`
	SessionID   string     `json:"session_id,omitempty" yaml:"session_id,omitempty"`
	UsedSession string     `json:"used_session,omitempty" yaml:"used_session,omitempty"`
}

func approvalViewOf(w *sigilv1.WriteApproval) approvalView {
	opt := func(set bool, t time.Time) *time.Time {
		if !set {
			return nil
		}
		return &t
	}
	return approvalView{
		ID: w.GetId(), Agent: w.GetAgent(), AgentKind: w.GetAgentKind(), OnBehalfOf: w.GetOnBehalfOf(),
		Database: w.GetDatabase(), DBUser: w.GetDbUser(), DBName: w.GetDbName(), Statement: w.GetStatement(),
		Class: w.GetClass(), State: w.GetState(), Created: w.GetCreated().AsTime(), Expires: w.GetExpires().AsTime(),
		Reviewer: w.GetReviewer(), Reason: w.GetReason(),
		ReviewTime: opt(w.GetReviewTime() != nil, w.GetReviewTime().AsTime()),
		UsedAt:     opt(w.GetUsedAt() != nil, w.GetUsedAt().AsTime()),
		SessionID:  w.GetSessionId(), UsedSession: w.GetUsedSession(),
	}
}

func (a *app) approvalLsCommand() *cobra.Command {
	var state, format string
	cmd := &cobra.Command{
		Use:   "ls [--state pending|approved|denied|used|expired|all]",
		Short: "List the write approvals you may see",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Approvals.ListApprovals(cmd.Context(), connect.NewRequest(&sigilv1.ListApprovalsRequest{State: state}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			list := resp.Msg.Approvals
			if format != cli.FormatText {
				out := make([]approvalView, 0, len(list))
				for _, w := range list {
					out = append(out, approvalViewOf(w))
				}
				return trace.Wrap(cli.Write(a.stdout, format, out))
			}
			if len(list) == 0 {
				fmt.Fprintln(a.stdout, "No write approvals.")
				return nil
			}
			now := a.now()
			rows := make([][]string, 0, len(list))
			for _, w := range list {
				person := w.GetOnBehalfOf()
				if person == "" {
					person = "-"
				}
				rows = append(rows, []string{w.GetId(), w.GetAgent(), person, w.GetDatabase(), w.GetState(),
					cli.OneLine(w.GetStatement(), statementColumn), humanDuration(now.Sub(w.GetCreated().AsTime()))})
			}
			return trace.Wrap(cli.Table(a.stdout, []string{"ID", "AGENT", "ON BEHALF OF", "DATABASE", "STATE", "STATEMENT", "AGE"}, rows))
		},
	}
	cmd.Flags().StringVar(&state, "state", "all", "only approvals in this state: pending, approved, denied, used, expired or all")
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

func (a *app) approvalShowCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one write approval with its whole statement",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Approvals.GetApproval(cmd.Context(), connect.NewRequest(&sigilv1.GetApprovalRequest{Id: args[0]}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			v := approvalViewOf(resp.Msg.Approval)
			if format != cli.FormatText {
				return trace.Wrap(cli.Write(a.stdout, format, v))
			}
			agent := fmt.Sprintf("%s (%s)", v.Agent, v.AgentKind)
			if v.OnBehalfOf != "" {
				agent += " on behalf of " + v.OnBehalfOf
			}
			fmt.Fprintf(a.stdout, "ID:        %s\nAgent:     %s\nDatabase:  %s (db user %q, db name %q)\nState:     %s\nCreated:   %s\nExpires:   %s\n",
				v.ID, agent, v.Database, v.DBUser, v.DBName, v.State, v.Created.Local().Format(time.RFC3339), v.Expires.Local().Format(time.RFC3339))
			if v.Reviewer != "" {
				fmt.Fprintf(a.stdout, "Reviewer:  %s at %s %s\n", v.Reviewer, v.ReviewTime.Local().Format(time.RFC3339), v.Reason)
			}
			if v.UsedAt != nil {
				fmt.Fprintf(a.stdout, "Used:      %s in session %s\n", v.UsedAt.Local().Format(time.RFC3339), v.UsedSession)
			}
			fmt.Fprintf(a.stdout, "Statement (%s):\n%s\n", v.Class, v.Statement)
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

func (a *app) approvalReviewCommand() *cobra.Command {
	var approve, deny bool
	var reason string
	cmd := &cobra.Command{
		Use:   "review ID --approve|--deny [--reason TEXT]",
		Short: "Approve or deny a write an agent asked to run",
		Long: `Approve or deny a pending write approval. You may review the writes of agents
acting on your behalf, or every agent's when your role allows "update" on
"approvals". Approved, the agent may run that exact statement once on that
database within 15 minutes. Check the statement first: "sigil approval show ID".`,
		Example: `  sigil approval review 6f1c... --approve --reason "ticket 42"
  sigil approval review 6f1c... --deny --reason "not on production"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if approve == deny {
				return trace.BadParameter("pass exactly one of --approve and --deny")
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Approvals.ReviewApproval(cmd.Context(), connect.NewRequest(&sigilv1.ReviewApprovalRequest{Id: args[0], Approve: approve, Reason: reason}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			w := resp.Msg.Approval
			if w.GetState() == "approved" {
				fmt.Fprintf(a.stdout, "Approved: %s may run the statement once on database %s until %s (approval %s).\n",
					w.GetAgent(), w.GetDatabase(), w.GetExpires().AsTime().Local().Format(time.RFC3339), w.GetId())
				return nil
			}
			fmt.Fprintf(a.stdout, "Write approval %s of %s on database %s is now %s.\n", w.GetId(), w.GetAgent(), w.GetDatabase(), w.GetState())
			return nil
		},
	}
	cmd.Flags().BoolVar(&approve, "approve", false, "approve the write")
	cmd.Flags().BoolVar(&deny, "deny", false, "deny the write")
	cmd.Flags().StringVar(&reason, "reason", "", "why (the audit log keeps it)")
	return cmd
}
