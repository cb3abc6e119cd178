package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// RequestView is an access request as both CLIs print it.
type RequestView struct {
	ID              string       `json:"id" yaml:"id"`
	User            string       `json:"user" yaml:"user"`
	Roles           []string     `json:"roles" yaml:"roles"`
	Resources       []string     `json:"resources,omitempty" yaml:"resources,omitempty"`
	Reason          string       `json:"reason,omitempty" yaml:"reason,omitempty"`
	State           string       `json:"state" yaml:"state"`
	Created         time.Time    `json:"created" yaml:"created"`
	Expires         time.Time    `json:"expires" yaml:"expires"`
	ApprovalsNeeded int32        `json:"approvals_needed" yaml:"approvals_needed"`
	Reviews         []ReviewView `json:"reviews,omitempty" yaml:"reviews,omitempty"`
}

type ReviewView struct {
	Reviewer string    `json:"reviewer" yaml:"reviewer"`
	Decision string    `json:"decision" yaml:"decision"`
	Reason   string    `json:"reason,omitempty" yaml:"reason,omitempty"`
	Time     time.Time `json:"time" yaml:"time"`
}

// RequestViewOf converts r for printing.
func RequestViewOf(r *sigilv1.AccessRequest) RequestView {
	v := RequestView{
		ID: r.GetId(), User: r.GetUser(), Roles: r.GetRoles(), Resources: r.GetResources(), Reason: r.GetReason(),
		State: r.GetState(), Created: r.GetCreated().AsTime(), Expires: r.GetExpires().AsTime(), ApprovalsNeeded: r.GetApprovalsNeeded(),
	}
	for _, rv := range r.GetReviews() {
		d := "denied"
		if rv.GetApprove() {
			d = "approved"
		}
		v.Reviews = append(v.Reviews, ReviewView{Reviewer: rv.GetReviewer(), Decision: d, Reason: rv.GetReason(), Time: rv.GetTime().AsTime()})
	}
	return v
}

// Approvers lists who approved r, in order.
func Approvers(r *sigilv1.AccessRequest) []string {
	var out []string
	for _, rv := range r.GetReviews() {
		if rv.GetApprove() {
			out = append(out, rv.GetReviewer())
		}
	}
	return out
}

// WriteRequests prints access requests as a table, or in format.
func WriteRequests(w io.Writer, format string, reqs []*sigilv1.AccessRequest) error {
	if format != FormatText {
		out := make([]RequestView, 0, len(reqs))
		for _, r := range reqs {
			out = append(out, RequestViewOf(r))
		}
		return trace.Wrap(Write(w, format, out))
	}
	if len(reqs) == 0 {
		fmt.Fprintln(w, "No access requests.")
		return nil
	}
	rows := make([][]string, 0, len(reqs))
	for _, r := range reqs {
		rows = append(rows, []string{r.GetId(), r.GetUser(), strings.Join(r.GetRoles(), ","), r.GetState(),
			fmt.Sprintf("%d/%d", len(Approvers(r)), r.GetApprovalsNeeded()), r.GetExpires().AsTime().Local().Format(time.RFC3339), r.GetReason()})
	}
	return trace.Wrap(Table(w, []string{"ID", "USER", "ROLES", "STATE", "APPROVALS", "EXPIRES", "REASON"}, rows))
}

// ReviewLine is the line both CLIs print after a review.
func ReviewLine(r *sigilv1.AccessRequest) string {
	return fmt.Sprintf("Access request %s of %s is now %s (%d of %d approvals).", r.GetId(), r.GetUser(), r.GetState(), len(Approvers(r)), r.GetApprovalsNeeded())
}
