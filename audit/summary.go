package audit

import (
	"fmt"
	"strings"
)

// Summary is a one-line, human description of ev for chat notifications
// (the webhook exporter's "slack" format). It uses only fields that are
// safe to show: Details were redacted when the event was stored.
func Summary(ev *Event) string {
	d := ev.GetDetails()
	who := ev.GetIdentity().GetUser()
	if who == "" {
		who = "someone"
	}
	switch ev.GetType() {
	case EventRequestCreated:
		s := fmt.Sprintf("%s requests role(s) %s until %s (access request %s)", who, d["roles"], d["expires"], d["request_id"])
		if r := d["reason"]; r != "" {
			s += ": " + r
		}
		if res := d["resources"]; res != "" {
			s += " [only " + res + "]"
		}
		return s
	case EventRequestReviewed:
		s := fmt.Sprintf("%s %s %s's access request %s for role(s) %s; it is now %s", who, d["decision"], d["requester"], d["request_id"], d["roles"], d["state"])
		if r := d["reason"]; r != "" {
			s += ": " + r
		}
		return s
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", ev.GetType(), who)
	if r := ev.GetResource(); r.GetName() != "" {
		fmt.Fprintf(&b, " on %s %s", r.GetKind(), r.GetName())
	}
	if !ev.GetSuccess() {
		b.WriteString(" (failed")
		if e := ev.GetError(); e != "" {
			b.WriteString(": " + e)
		}
		b.WriteString(")")
	}
	return b.String()
}
