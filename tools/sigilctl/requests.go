package main

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

func (e *env) requestsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "requests",
		Short: "List and review access requests",
		Long: `List and review access requests (time-boxed roles people ask for with
"sigil request create"). The admin identity of --data-dir may review every
role (built-in role admin: review_requests.roles ["*"]); a request still
needs its number of approvals from different reviewers, and one denial
denies it.`,
		Example: `  sigilctl requests ls --state pending
  sigilctl requests approve 6f1c... --reason "ticket 42"
  sigilctl requests deny 6f1c... --reason "use the replica"`,
	}
	var state string
	ls := &cobra.Command{
		Use:   "ls [--state pending|approved|denied|expired]",
		Short: "List access requests",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Requests.ListAccessRequests(cmd.Context(), connect.NewRequest(&sigilv1.ListAccessRequestsRequest{State: state}))
			if err != nil {
				return trace.Wrap(err)
			}
			return trace.Wrap(cli.WriteRequests(e.stdout, e.format, resp.Msg.Requests))
		},
	}
	ls.Flags().StringVar(&state, "state", "", "only requests in this state")
	cmd.AddCommand(ls, e.reviewCommand(true), e.reviewCommand(false))
	return cmd
}

func (e *env) reviewCommand(approve bool) *cobra.Command {
	verb, past := "deny", "Deny"
	if approve {
		verb, past = "approve", "Approve"
	}
	var reason string
	cmd := &cobra.Command{
		Use:   verb + " ID [--reason TEXT]",
		Short: past + " a pending access request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Requests.ReviewAccessRequest(cmd.Context(), connect.NewRequest(&sigilv1.ReviewAccessRequestRequest{Id: args[0], Approve: approve, Reason: reason}))
			if err != nil {
				return trace.Wrap(err)
			}
			r := resp.Msg.Request
			if e.format != cli.FormatText {
				return trace.Wrap(cli.Write(e.stdout, e.format, cli.RequestViewOf(r)))
			}
			fmt.Fprintln(e.stdout, cli.ReviewLine(r))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (the requester and the audit log see it)")
	return cmd
}
