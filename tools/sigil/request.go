package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// requestPoll is how often --wait asks whether a request was reviewed.
const requestPoll = time.Second

func (a *app) requestCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "request",
		Short: "Ask for time-boxed roles, and review others' requests",
		Long: `Access requests grant roles for a limited time instead of standing
privilege. Your roles say which roles you may request (allow.request), for how
long (max_duration) and how many reviewers must approve (approvals); reviewers'
roles say what they may approve (allow.review_requests). Nobody approves their
own request, and one denial denies.

Once approved, "sigil login --request-id ID" (or "request create --wait")
replaces your login certificate with one that also carries the requested roles
and expires with the request. Sessions opened with them end when it expires;
run "sigil login" again afterwards.`,
		Example: `  sigil request create --roles dba --reason "fix ticket 42" --max-duration 2h --wait
  sigil request ls --state pending
  sigil request review 6f1c... --approve --reason "ok for ticket 42"
  sigil login --request-id 6f1c...`,
	}
	cmd.AddCommand(a.requestCreateCommand(), a.requestLsCommand(), a.requestShowCommand(), a.requestReviewCommand())
	return cmd
}

func (a *app) requestCreateCommand() *cobra.Command {
	var (
		roles, resources []string
		reason           string
		maxDuration      time.Duration
		wait             bool
		format           string
	)
	cmd := &cobra.Command{
		Use:   "create --roles ROLE[,ROLE] [--reason TEXT] [--max-duration D] [--resource KIND/NAME] [--wait]",
		Short: "Ask for roles for a limited time",
		Long: `Ask for roles for a limited time. Prints the request id; reviewers see it in
"sigil request ls", "sigilctl requests ls" and the web console. With --wait,
sigil waits until the request is approved, denied or expired, and when
approved logs you in with the new roles.

--resource limits the requested roles to some resources (db/NAME or
node/NAME, repeatable): the elevated certificate reaches only those.`,
		Example: `  sigil request create --roles dba --reason "fix ticket 42"
  sigil request create --roles dba --resource db/pg1 --max-duration 30m --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			if maxDuration < 0 {
				return trace.BadParameter("--max-duration must be positive")
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Requests.CreateAccessRequest(cmd.Context(), connect.NewRequest(&sigilv1.CreateAccessRequestRequest{
				Roles: roles, Reason: reason, MaxDurationSeconds: int64(maxDuration / time.Second), Resources: resources,
			}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			r := resp.Msg.Request
			if format != cli.FormatText && !wait {
				return trace.Wrap(cli.Write(a.stdout, format, cli.RequestViewOf(r)))
			}
			fmt.Fprintf(a.stdout, "Access request %s for role(s) %s created; it needs %d approval(s) and expires at %s.\n",
				r.GetId(), strings.Join(r.GetRoles(), ","), r.GetApprovalsNeeded(), r.GetExpires().AsTime().Local().Format(time.RFC3339))
			if !wait {
				fmt.Fprintf(a.stdout, "Once approved: sigil login --request-id %s\n", r.GetId())
				return nil
			}
			return trace.Wrap(a.waitAndAssume(cmd.Context(), p, clt, r))
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&roles, "roles", nil, "roles to request (comma-separated or repeated)")
	f.StringVar(&reason, "reason", "", "why you need them (reviewers see it)")
	f.DurationVar(&maxDuration, "max-duration", 0, "how long the access should last (default and maximum: request.max_duration of your roles)")
	f.StringArrayVar(&resources, "resource", nil, "limit the roles to this resource, KIND/NAME (db/pg1, node/web1); repeatable")
	f.BoolVar(&wait, "wait", false, "wait for the review, then log in with the new roles")
	f.StringVar(&format, "format", cli.FormatText, "output format without --wait: text, json or yaml")
	_ = cmd.MarkFlagRequired("roles")
	return cmd
}

// waitAndAssume polls r until it is reviewed or expires; approved, it logs
// in with it.
func (a *app) waitAndAssume(ctx context.Context, p *client.Profile, clt *client.Client, r *sigilv1.AccessRequest) error {
	fmt.Fprintf(a.stderr, "Waiting for reviewers (Ctrl-C stops waiting; the request stays open)...\n")
	tick := time.NewTicker(requestPoll)
	defer tick.Stop()
	for r.GetState() == "pending" {
		select {
		case <-ctx.Done():
			return trace.Wrap(ctx.Err())
		case <-tick.C:
		}
		resp, err := clt.Requests.GetAccessRequest(ctx, connect.NewRequest(&sigilv1.GetAccessRequestRequest{Id: r.GetId()}))
		if err != nil {
			return apiError(err, p.Proxy)
		}
		r = resp.Msg.Request
	}
	if r.GetState() != "approved" {
		return trace.AccessDenied("access request %s was %s%s", r.GetId(), r.GetState(), lastReviewNote(r))
	}
	fmt.Fprintf(a.stderr, "Approved by %s.\n", strings.Join(cli.Approvers(r), ", "))
	return trace.Wrap(a.assumeRequest(ctx, p, clt, r.GetId()))
}

// assumeRequest replaces the current login with one carrying the roles of
// an approved request.
func (a *app) assumeRequest(ctx context.Context, p *client.Profile, clt *client.Client, id string) error {
	pubDER, keyPEM, err := newKey()
	if err != nil {
		return trace.Wrap(err)
	}
	resp, err := clt.Requests.AssumeAccessRequest(ctx, connect.NewRequest(&sigilv1.AssumeAccessRequestRequest{Id: id, TlsPublicKey: pubDER}))
	if err != nil {
		return apiError(err, p.Proxy)
	}
	return trace.Wrap(a.saveLogin(ctx, client.Home(), p.Proxy, p.User, p.Identity.TLSCAPEM, keyPEM, resp.Msg.GetLogin()))
}

func (a *app) requestLsCommand() *cobra.Command {
	var state, format string
	cmd := &cobra.Command{
		Use:   "ls [--state pending|approved|denied|expired]",
		Short: "List your requests and those you may review",
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
			resp, err := clt.Requests.ListAccessRequests(cmd.Context(), connect.NewRequest(&sigilv1.ListAccessRequestsRequest{State: state}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			return trace.Wrap(cli.WriteRequests(a.stdout, format, resp.Msg.Requests))
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only requests in this state")
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

func (a *app) requestShowCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one request with its reviews",
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
			resp, err := clt.Requests.GetAccessRequest(cmd.Context(), connect.NewRequest(&sigilv1.GetAccessRequestRequest{Id: args[0]}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			r := resp.Msg.Request
			if format != cli.FormatText {
				return trace.Wrap(cli.Write(a.stdout, format, cli.RequestViewOf(r)))
			}
			v := cli.RequestViewOf(r)
			fmt.Fprintf(a.stdout, "ID:        %s\nUser:      %s\nRoles:     %s\nState:     %s (%d of %d approvals)\nExpires:   %s\n",
				v.ID, v.User, strings.Join(v.Roles, ","), v.State, len(cli.Approvers(r)), v.ApprovalsNeeded, v.Expires.Local().Format(time.RFC3339))
			if len(v.Resources) > 0 {
				fmt.Fprintf(a.stdout, "Resources: %s\n", strings.Join(v.Resources, ","))
			}
			if v.Reason != "" {
				fmt.Fprintf(a.stdout, "Reason:    %s\n", v.Reason)
			}
			for _, rv := range v.Reviews {
				fmt.Fprintf(a.stdout, "Review:    %s %s at %s %s\n", rv.Reviewer, rv.Decision, rv.Time.Local().Format(time.RFC3339), rv.Reason)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

func (a *app) requestReviewCommand() *cobra.Command {
	var approve, deny bool
	var reason string
	cmd := &cobra.Command{
		Use:   "review ID --approve|--deny [--reason TEXT]",
		Short: "Approve or deny someone's request",
		Long: `Approve or deny a pending access request your roles let you review
(allow.review_requests). A request needs its number of approvals from
different reviewers; one denial denies it. You cannot review your own.`,
		Example: `  sigil request review 6f1c... --approve --reason "ok for ticket 42"
  sigil request review 6f1c... --deny --reason "use the read replica"`,
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
			resp, err := clt.Requests.ReviewAccessRequest(cmd.Context(), connect.NewRequest(&sigilv1.ReviewAccessRequestRequest{Id: args[0], Approve: approve, Reason: reason}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			r := resp.Msg.Request
			fmt.Fprintln(a.stdout, cli.ReviewLine(r))
			return nil
		},
	}
	cmd.Flags().BoolVar(&approve, "approve", false, "approve the request")
	cmd.Flags().BoolVar(&deny, "deny", false, "deny the request")
	cmd.Flags().StringVar(&reason, "reason", "", "why (the requester and the audit log see it)")
	return cmd
}

func lastReviewNote(r *sigilv1.AccessRequest) string {
	rvs := r.GetReviews()
	if len(rvs) == 0 {
		return ""
	}
	last := rvs[len(rvs)-1]
	if last.GetApprove() {
		return ""
	}
	note := " by " + last.GetReviewer()
	if last.GetReason() != "" {
		note += ": " + last.GetReason()
	}
	return note
}
