package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/integration/testenv"
)

// TestAuditSurvivesKill9 emits audit events from several concurrent API
// clients, kills sigild with SIGKILL mid-load, restarts it and checks that
// every event whose call had returned is in the log and the chain verifies.
func TestAuditSurvivesKill9(t *testing.T) {
	d := testenv.StartDaemon(t, "")
	clt := d.AdminClient(t)

	const workers = 8
	var (
		mu      sync.Mutex
		acked   []string
		stopped atomic.Bool
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stopped.Load(); i++ {
				name := fmt.Sprintf("load-%d-%d", w, i)
				role, err := types.NewRole(name, types.RoleSpec{})
				if err != nil {
					t.Error(err)
					return
				}
				data, err := types.MarshalResource(role)
				if err != nil {
					t.Error(err)
					return
				}
				_, err = clt.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
					Resource: &sigilv1.Resource{Kind: types.KindRole, Name: name, Json: data},
				}))
				if err != nil {
					// Expected once the daemon dies.
					return
				}
				mu.Lock()
				acked = append(acked, name)
				mu.Unlock()
			}
		}()
	}
	// Let the load build up, then crash the daemon under it.
	testenv.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 1500 {
			return fmt.Errorf("only %d calls acknowledged so far", len(acked))
		}
		return nil
	})
	d.Kill()
	stopped.Store(true)
	wg.Wait()
	mu.Lock()
	want := append([]string(nil), acked...)
	mu.Unlock()
	t.Logf("%d calls acknowledged before SIGKILL", len(want))

	d2 := testenv.StartDaemon(t, d.DataDir)
	clt2 := d2.AdminClient(t)
	found := map[string]bool{}
	req := &sigilv1.SearchAuditRequest{Types: []string{"resource.changed"}, Limit: 1000}
	for {
		resp, err := clt2.Audit.Search(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Msg.Events {
			if ev.GetIdentity().GetUser() != "sigilctl" {
				t.Fatalf("event names %q, want the admin identity sigilctl", ev.GetIdentity().GetUser())
			}
			found[ev.GetResource().GetName()] = true
		}
		if resp.Msg.NextPageToken == "" {
			break
		}
		req.PageToken = resp.Msg.NextPageToken
	}
	var missing []string
	for _, name := range want {
		if !found[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged events lost across kill -9, e.g. %v", len(missing), len(want), missing[:min(5, len(missing))])
	}

	r := testenv.Run(t, nil, "", "sigilctl", "--data-dir", d2.DataDir, "audit", "verify")
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, "Audit chain OK") {
		t.Fatalf("audit verify after kill -9: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
}
