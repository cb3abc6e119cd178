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
	case EventApprovalCreated:
		// Emitted by the gateway for the agent; the reviewer needs the id.
		s := fmt.Sprintf("%s asks to run a write on database %s (approval %s)", who, firstOf(d["database"], ev.GetResource().GetName()), d["approval_id"])
		if p := firstOf(d["on_behalf_of"], ev.GetIdentity().GetOnBehalfOf()); p != "" {
			s += " for " + p
		}
		if st := ev.GetStatement(); st != "" {
			s += ": " + truncate(strings.Join(strings.Fields(st), " "), 200)
		}
		return s + fmt.Sprintf("; review with \"sigil approval review %s --approve\" or --deny", d["approval_id"])
	case EventApprovalReviewed:
		s := fmt.Sprintf("%s %s the write %s asked to run on database %s (approval %s)", who, d["decision"], d["agent"], d["database"], d["approval_id"])
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

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
