package audit

import (
	"strings"
	"testing"
)

func TestSummaryOfWriteApprovals(t *testing.T) {
	created := &Event{
		Type:      EventApprovalCreated,
		Identity:  &Identity{User: "claude", Kind: "agent", OnBehalfOf: "alice"},
		Resource:  &Resource{Kind: "database", Name: "pg1"},
		Statement: "UPDATE orders\n   SET state = 'shipped' WHERE id = 42",
		Details:   map[string]string{"approval_id": "6f1c"},
	}
	want := `claude asks to run a write on database pg1 (approval 6f1c) for alice: UPDATE orders SET state = 'shipped' WHERE id = 42; review with "sigil approval review 6f1c --approve" or --deny`
	if got := Summary(created); got != want {
		t.Fatalf("created:\n got %s\nwant %s", got, want)
	}
	created.Statement = strings.Repeat("x", 300)
	if got := Summary(created); !strings.Contains(got, strings.Repeat("x", 200)+truncatedSuffix+"; review") {
		t.Fatalf("long statement: %s", got)
	}
	reviewed := &Event{
		Type:     EventApprovalReviewed,
		Identity: &Identity{User: "alice", Kind: "human"},
		Details:  map[string]string{"approval_id": "6f1c", "agent": "claude", "database": "pg1", "decision": "denied", "reason": "not on prod"},
	}
	if got := Summary(reviewed); got != "alice denied the write claude asked to run on database pg1 (approval 6f1c): not on prod" {
		t.Fatalf("reviewed: %s", got)
	}
}
