package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
)

// Run checks that backends built by newBackend honour the storage.Backend
// contract. newBackend must return a fresh, empty backend and arrange (with
// t.Cleanup) for it to be closed; the suite may close it itself first, so
// Close must be idempotent.
//
// Contract choices the suite pins down beyond the interface docs:
//   - CompareAndSwap on a missing or expired key is trace.NotFound (not
//     CompareFailed).
//   - Keys must start with "/" and be at most storage.MaxKeyLen bytes; values
//     at most storage.MaxValueLen bytes; List and Watch prefixes must start
//     with "/". Violations are trace.BadParameter.
//   - Expired items are invisible to Get, List, CompareAndSwap and Delete,
//     Create over them succeeds, and a watcher eventually gets EventDelete.
//   - Operations after Close return an error.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"GetMissing", testGetMissing},
		{"CreateGet", testCreateGet},
		{"CreateTwice", testCreateTwice},
		{"PutOverwrites", testPutOverwrites},
		{"RevisionsIncreaseAcrossKeys", testRevisionsIncrease},
		{"ReturnedValuesAreCopies", testValuesAreCopies},
		{"CompareAndSwap", testCAS},
		{"CompareAndSwapStale", testCASStale},
		{"CompareAndSwapMissing", testCASMissing},
		{"Delete", testDelete},
		{"List", testList},
		{"TTL", testTTL},
		{"ExpiresInThePast", testExpiresInPast},
		{"Watch", testWatch},
		{"WatchEndsWithContext", testWatchEndsWithContext},
		{"WatchSeesExpiry", testWatchSeesExpiry},
		{"ConcurrentCompareAndSwap", testConcurrentCAS},
		{"CreateRace", testCreateRace},
		{"BadParameters", testBadParameters},
		{"SizeLimits", testSizeLimits},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newBackend(t))
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it is true or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantErr(t *testing.T, err error, is func(error) bool, kind, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s error, got nil", kind)
	}
	if !is(err) {
		t.Fatalf("want %s error, got %T: %v", kind, trace.Unwrap(err), err)
	}
	if substr != "" && !strings.Contains(err.Error(), substr) {
		t.Fatalf("want %s error mentioning %q, got %v", kind, substr, err)
	}
}

func mustNoErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func mustPut(t *testing.T, b storage.Backend, key, value string) *storage.Item {
	t.Helper()
	it, err := b.Put(ctxFor(t), storage.Item{Key: key, Value: []byte(value)})
	mustNoErr(t, err)
	return it
}

func mustGet(t *testing.T, b storage.Backend, key, wantValue string, wantRev int64) {
	t.Helper()
	got, err := b.Get(ctxFor(t), key)
	mustNoErr(t, err)
	if got.Key != key || string(got.Value) != wantValue || got.Revision != wantRev {
		t.Fatalf("Get(%q) = {%q %q rev %d}, want {%q %q rev %d}", key, got.Key, got.Value, got.Revision, key, wantValue, wantRev)
	}
}

func testGetMissing(t *testing.T, b storage.Backend) {
	_, err := b.Get(ctxFor(t), "/missing")
	wantErr(t, err, trace.IsNotFound, "NotFound", "/missing")
}

func testCreateGet(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	created, err := b.Create(ctx, storage.Item{Key: "/users/alice", Value: []byte("v1")})
	mustNoErr(t, err)
	if created.Revision <= 0 {
		t.Fatalf("Create returned revision %d, want > 0", created.Revision)
	}
	if created.Key != "/users/alice" || string(created.Value) != "v1" || !created.Expires.IsZero() {
		t.Fatalf("Create returned %+v", created)
	}
	mustGet(t, b, "/users/alice", "v1", created.Revision)
	got, err := b.Get(ctx, "/users/alice")
	mustNoErr(t, err)
	if !got.Expires.IsZero() {
		t.Fatalf("item without TTL has Expires %v", got.Expires)
	}
}

func testCreateTwice(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	first, err := b.Create(ctx, storage.Item{Key: "/k", Value: []byte("first")})
	mustNoErr(t, err)
	_, err = b.Create(ctx, storage.Item{Key: "/k", Value: []byte("second")})
	wantErr(t, err, trace.IsAlreadyExists, "AlreadyExists", "/k")
	mustGet(t, b, "/k", "first", first.Revision)
}

func testPutOverwrites(t *testing.T, b storage.Backend) {
	first := mustPut(t, b, "/k", "one")
	second := mustPut(t, b, "/k", "two")
	if second.Revision <= first.Revision {
		t.Fatalf("overwrite revision %d not above %d", second.Revision, first.Revision)
	}
	mustGet(t, b, "/k", "two", second.Revision)
}

func testRevisionsIncrease(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	var last int64
	check := func(what string, rev int64) {
		t.Helper()
		if rev <= last {
			t.Fatalf("%s got revision %d, not above previous %d", what, rev, last)
		}
		last = rev
	}
	for i := range 5 {
		check("put", mustPut(t, b, fmt.Sprintf("/rev/%d", i), "x").Revision)
	}
	created, err := b.Create(ctx, storage.Item{Key: "/rev/created", Value: []byte("x")})
	mustNoErr(t, err)
	check("create", created.Revision)
	swapped, err := b.CompareAndSwap(ctx, created.Revision, storage.Item{Key: "/rev/created", Value: []byte("y")})
	mustNoErr(t, err)
	check("compare-and-swap", swapped.Revision)
	mustNoErr(t, b.Delete(ctx, "/rev/0"))
	// Re-creating a deleted key must not reuse an old revision.
	check("put after delete", mustPut(t, b, "/rev/0", "again").Revision)
}

func testValuesAreCopies(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	in := []byte("original")
	out, err := b.Put(ctx, storage.Item{Key: "/copy", Value: in})
	mustNoErr(t, err)
	in[0] = 'X'
	out.Value[1] = 'Y'
	got, err := b.Get(ctx, "/copy")
	mustNoErr(t, err)
	if string(got.Value) != "original" {
		t.Fatalf("stored value changed through caller's slices: %q", got.Value)
	}
}

func testCAS(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	orig := mustPut(t, b, "/cas", "a")
	swapped, err := b.CompareAndSwap(ctx, orig.Revision, storage.Item{Key: "/cas", Value: []byte("b")})
	mustNoErr(t, err)
	if swapped.Revision <= orig.Revision || string(swapped.Value) != "b" {
		t.Fatalf("CompareAndSwap returned rev %d value %q, want rev > %d value \"b\"", swapped.Revision, swapped.Value, orig.Revision)
	}
	mustGet(t, b, "/cas", "b", swapped.Revision)
}

func testCASStale(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	orig := mustPut(t, b, "/cas", "a")
	current := mustPut(t, b, "/cas", "b")
	_, err := b.CompareAndSwap(ctx, orig.Revision, storage.Item{Key: "/cas", Value: []byte("c")})
	wantErr(t, err, trace.IsCompareFailed, "CompareFailed", "/cas")
	mustGet(t, b, "/cas", "b", current.Revision)
}

func testCASMissing(t *testing.T, b storage.Backend) {
	_, err := b.CompareAndSwap(ctxFor(t), 1, storage.Item{Key: "/nope", Value: []byte("x")})
	wantErr(t, err, trace.IsNotFound, "NotFound", "/nope")
	_, err = b.Get(ctxFor(t), "/nope")
	wantErr(t, err, trace.IsNotFound, "NotFound", "")
}

func testDelete(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	mustPut(t, b, "/del", "x")
	mustPut(t, b, "/del2", "y")
	mustNoErr(t, b.Delete(ctx, "/del"))
	_, err := b.Get(ctx, "/del")
	wantErr(t, err, trace.IsNotFound, "NotFound", "/del")
	wantErr(t, b.Delete(ctx, "/del"), trace.IsNotFound, "NotFound", "/del")
	wantErr(t, b.Delete(ctx, "/never"), trace.IsNotFound, "NotFound", "/never")
	// Deleting one key must leave its neighbours alone.
	mustGet(t, b, "/del2", "y", mustRev(t, b, "/del2"))
}

func mustRev(t *testing.T, b storage.Backend, key string) int64 {
	t.Helper()
	it, err := b.Get(ctxFor(t), key)
	mustNoErr(t, err)
	return it.Revision
}

func keysOf(items []storage.Item) []string {
	keys := make([]string, 0, len(items))
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

func testList(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	// Inserted out of order on purpose.
	for _, k := range []string{"/roles/c", "/rolesX/a", "/roles/a", "/users/a", "/roles/b/nested", "/role", "/roles/b"} {
		mustPut(t, b, k, "v:"+k)
	}
	tests := []struct {
		prefix string
		limit  int
		want   []string
	}{
		{"/roles/", 0, []string{"/roles/a", "/roles/b", "/roles/b/nested", "/roles/c"}},
		{"/roles/", 2, []string{"/roles/a", "/roles/b"}},
		{"/roles/", 10, []string{"/roles/a", "/roles/b", "/roles/b/nested", "/roles/c"}},
		{"/rolesX/", 0, []string{"/rolesX/a"}},
		{"/roles/b", 0, []string{"/roles/b", "/roles/b/nested"}},
		{"/nothing/", 0, []string{}},
		{"/", 3, []string{"/role", "/roles/a", "/roles/b"}},
	}
	for _, tt := range tests {
		got, err := b.List(ctx, tt.prefix, tt.limit)
		mustNoErr(t, err)
		if fmt.Sprint(keysOf(got)) != fmt.Sprint(tt.want) {
			t.Errorf("List(%q, %d) = %v, want %v", tt.prefix, tt.limit, keysOf(got), tt.want)
		}
		for _, it := range got {
			if string(it.Value) != "v:"+it.Key || it.Revision <= 0 {
				t.Errorf("List(%q) item %q has value %q revision %d", tt.prefix, it.Key, it.Value, it.Revision)
			}
		}
	}
}

func testTTL(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	expires := time.Now().Add(400 * time.Millisecond)
	put, err := b.Put(ctx, storage.Item{Key: "/ttl/short", Value: []byte("x"), Expires: expires})
	mustNoErr(t, err)
	mustPut(t, b, "/ttl/forever", "y")
	before := time.Now()
	got, err := b.Get(ctx, "/ttl/short")
	// On a loaded machine the item may legitimately be gone already.
	if before.Before(expires) {
		mustNoErr(t, err)
		// Backends may store coarser time than Go's nanoseconds; a millisecond is enough.
		if d := got.Expires.Sub(expires).Abs(); d > time.Millisecond {
			t.Fatalf("Get returned Expires %v, want %v", got.Expires, expires)
		}
	}

	eventually(t, 10*time.Second, "the item to expire", func() bool {
		_, err := b.Get(ctx, "/ttl/short")
		return trace.IsNotFound(err)
	})
	items, err := b.List(ctx, "/ttl/", 0)
	mustNoErr(t, err)
	if keys := fmt.Sprint(keysOf(items)); keys != "[/ttl/forever]" {
		t.Fatalf("List after expiry = %s, want [/ttl/forever]", keys)
	}
	_, err = b.CompareAndSwap(ctx, put.Revision, storage.Item{Key: "/ttl/short", Value: []byte("z")})
	wantErr(t, err, trace.IsNotFound, "NotFound", "/ttl/short")

	// Create over an expired key succeeds and the new item has no expiry.
	created, err := b.Create(ctx, storage.Item{Key: "/ttl/short", Value: []byte("new")})
	mustNoErr(t, err)
	if created.Revision <= put.Revision {
		t.Fatalf("recreated revision %d not above %d", created.Revision, put.Revision)
	}
	mustGet(t, b, "/ttl/short", "new", created.Revision)
}

func testExpiresInPast(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	_, err := b.Put(ctx, storage.Item{Key: "/past", Value: []byte("x"), Expires: time.Now().Add(-time.Second)})
	mustNoErr(t, err)
	_, err = b.Get(ctx, "/past")
	wantErr(t, err, trace.IsNotFound, "NotFound", "/past")
	wantErr(t, b.Delete(ctx, "/past"), trace.IsNotFound, "NotFound", "/past")
	_, err = b.Create(ctx, storage.Item{Key: "/past", Value: []byte("y")})
	mustNoErr(t, err)
}

// nextEvent returns the next event, failing if none arrives in time or the
// channel closes.
func nextEvent(t *testing.T, ch <-chan storage.Event) storage.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed unexpectedly")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a watch event")
	}
	return storage.Event{}
}

func testWatch(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	ch, err := b.Watch(ctx, "/w/")
	mustNoErr(t, err)

	a := mustPut(t, b, "/w/a", "1")
	mustPut(t, b, "/wX/a", "ignored")
	mustPut(t, b, "/other", "ignored")
	bItem, err := b.Create(ctx, storage.Item{Key: "/w/b", Value: []byte("2")})
	mustNoErr(t, err)
	a2, err := b.CompareAndSwap(ctx, a.Revision, storage.Item{Key: "/w/a", Value: []byte("3")})
	mustNoErr(t, err)
	mustNoErr(t, b.Delete(ctx, "/w/b"))
	mustNoErr(t, b.Delete(ctx, "/other"))
	end := mustPut(t, b, "/w/end", "sentinel")

	want := []struct {
		typ   storage.EventType
		key   string
		value string
		rev   int64
	}{
		{storage.EventPut, "/w/a", "1", a.Revision},
		{storage.EventPut, "/w/b", "2", bItem.Revision},
		{storage.EventPut, "/w/a", "3", a2.Revision},
		{storage.EventDelete, "/w/b", "", 0},
		{storage.EventPut, "/w/end", "sentinel", end.Revision},
	}
	for i, w := range want {
		ev := nextEvent(t, ch)
		if ev.Type != w.typ || ev.Item.Key != w.key {
			t.Fatalf("event %d = type %d key %q, want type %d key %q", i, ev.Type, ev.Item.Key, w.typ, w.key)
		}
		if w.typ == storage.EventPut && (string(ev.Item.Value) != w.value || ev.Item.Revision != w.rev) {
			t.Fatalf("event %d for %q has value %q revision %d, want %q revision %d", i, w.key, ev.Item.Value, ev.Item.Revision, w.value, w.rev)
		}
	}
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("unexpected extra event %+v", ev)
		}
	default:
	}
}

func testWatchEndsWithContext(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(ctxFor(t))
	ch, err := b.Watch(ctx, "/w/")
	mustNoErr(t, err)
	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
}

func testWatchSeesExpiry(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	ch, err := b.Watch(ctx, "/exp/")
	mustNoErr(t, err)
	_, err = b.Put(ctx, storage.Item{Key: "/exp/a", Value: []byte("x"), Expires: time.Now().Add(200 * time.Millisecond)})
	mustNoErr(t, err)
	if ev := nextEvent(t, ch); ev.Type != storage.EventPut || ev.Item.Key != "/exp/a" {
		t.Fatalf("first event = %+v, want put of /exp/a", ev)
	}
	if ev := nextEvent(t, ch); ev.Type != storage.EventDelete || ev.Item.Key != "/exp/a" {
		t.Fatalf("second event = %+v, want delete of /exp/a", ev)
	}
}

func testConcurrentCAS(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	const workers, perWorker = 10, 20
	mustPut(t, b, "/counter", "0")

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for done := 0; done < perWorker; {
				cur, err := b.Get(ctx, "/counter")
				if err != nil {
					errs <- err
					return
				}
				n, err := strconv.Atoi(string(cur.Value))
				if err != nil {
					errs <- err
					return
				}
				_, err = b.CompareAndSwap(ctx, cur.Revision, storage.Item{Key: "/counter", Value: []byte(strconv.Itoa(n + 1))})
				switch {
				case err == nil:
					done++
				case trace.IsCompareFailed(err):
					// Lost the race; re-read and retry.
				default:
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("worker failed: %v", err)
	}
	got, err := b.Get(ctx, "/counter")
	mustNoErr(t, err)
	if want := strconv.Itoa(workers * perWorker); string(got.Value) != want {
		t.Fatalf("counter = %s, want %s (lost updates)", got.Value, want)
	}
}

func testCreateRace(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	const racers = 20
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []string
		other   []error
	)
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			v := fmt.Sprintf("racer-%d", i)
			_, err := b.Create(ctx, storage.Item{Key: "/race", Value: []byte(v)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winners = append(winners, v)
			case !trace.IsAlreadyExists(err):
				other = append(other, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("unexpected Create errors: %v", other)
	}
	if len(winners) != 1 {
		t.Fatalf("%d Creates won (%v), want exactly 1", len(winners), winners)
	}
	mustGet(t, b, "/race", winners[0], mustRev(t, b, "/race"))
}

func testBadParameters(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	longKey := "/" + strings.Repeat("k", storage.MaxKeyLen)
	for _, key := range []string{"", "noslash", "roles/dev", longKey} {
		name := key
		if len(name) > 20 {
			name = name[:20] + "..."
		}
		t.Run(fmt.Sprintf("key=%q", name), func(t *testing.T) {
			item := storage.Item{Key: key, Value: []byte("x")}
			calls := map[string]error{}
			_, calls["Get"] = b.Get(ctx, key)
			_, calls["Create"] = b.Create(ctx, item)
			_, calls["Put"] = b.Put(ctx, item)
			_, calls["CompareAndSwap"] = b.CompareAndSwap(ctx, 1, item)
			calls["Delete"] = b.Delete(ctx, key)
			for op, err := range calls {
				if !trace.IsBadParameter(err) {
					t.Errorf("%s with bad key: want BadParameter, got %v", op, err)
				}
			}
		})
	}
	for _, prefix := range []string{"", "roles/"} {
		_, err := b.List(ctx, prefix, 0)
		wantErr(t, err, trace.IsBadParameter, "BadParameter", "")
		_, err = b.Watch(ctx, prefix)
		wantErr(t, err, trace.IsBadParameter, "BadParameter", "")
	}
	// Nothing was written by the rejected calls.
	items, err := b.List(ctx, "/", 0)
	mustNoErr(t, err)
	if len(items) != 0 {
		t.Fatalf("rejected writes left items behind: %v", keysOf(items))
	}
}

func testSizeLimits(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	maxKey := "/" + strings.Repeat("k", storage.MaxKeyLen-1)
	maxValue := bytes.Repeat([]byte{0xab}, storage.MaxValueLen)
	put, err := b.Put(ctx, storage.Item{Key: maxKey, Value: maxValue})
	mustNoErr(t, err)
	got, err := b.Get(ctx, maxKey)
	mustNoErr(t, err)
	if !bytes.Equal(got.Value, maxValue) || got.Revision != put.Revision {
		t.Fatalf("max-size item did not round-trip (len %d, revision %d vs %d)", len(got.Value), got.Revision, put.Revision)
	}

	// Shrinking, regrowing and deleting a large value must not leave stale
	// bytes behind.
	small, err := b.Put(ctx, storage.Item{Key: maxKey, Value: []byte("small")})
	mustNoErr(t, err)
	mustGet(t, b, maxKey, "small", small.Revision)
	mid := bytes.Repeat([]byte("0123456789"), 150_000)
	grown, err := b.CompareAndSwap(ctx, small.Revision, storage.Item{Key: maxKey, Value: mid})
	mustNoErr(t, err)
	items, err := b.List(ctx, "/", 0)
	mustNoErr(t, err)
	if len(items) != 1 || !bytes.Equal(items[0].Value, mid) || items[0].Revision != grown.Revision {
		t.Fatalf("List after regrowing a large value returned %d items", len(items))
	}
	mustNoErr(t, b.Delete(ctx, maxKey))
	_, err = b.Get(ctx, maxKey)
	wantErr(t, err, trace.IsNotFound, "NotFound", "")

	tooBig := storage.Item{Key: "/big", Value: make([]byte, storage.MaxValueLen+1)}
	_, err = b.Put(ctx, tooBig)
	wantErr(t, err, trace.IsBadParameter, "BadParameter", "")
	_, err = b.Create(ctx, tooBig)
	wantErr(t, err, trace.IsBadParameter, "BadParameter", "")
	_, err = b.CompareAndSwap(ctx, grown.Revision, storage.Item{Key: maxKey, Value: tooBig.Value})
	wantErr(t, err, trace.IsBadParameter, "BadParameter", "")
}

func testClose(t *testing.T, b storage.Backend) {
	ctx := ctxFor(t)
	mustPut(t, b, "/k", "v")
	ch, err := b.Watch(ctx, "/")
	mustNoErr(t, err)
	mustNoErr(t, b.Close())

	// Watchers are released, not left hanging.
	select {
	case _, ok := <-ch:
		if ok {
			// The put above happened before Watch, so nothing may be queued.
			t.Fatal("unexpected event after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch channel not closed by Close")
	}

	ops := map[string]func() error{
		"Get":            func() error { _, err := b.Get(ctx, "/k"); return err },
		"Put":            func() error { _, err := b.Put(ctx, storage.Item{Key: "/k", Value: []byte("x")}); return err },
		"Create":         func() error { _, err := b.Create(ctx, storage.Item{Key: "/n", Value: []byte("x")}); return err },
		"CompareAndSwap": func() error { _, err := b.CompareAndSwap(ctx, 1, storage.Item{Key: "/k"}); return err },
		"Delete":         func() error { return b.Delete(ctx, "/k") },
		"List":           func() error { _, err := b.List(ctx, "/", 0); return err },
		"Watch":          func() error { _, err := b.Watch(ctx, "/"); return err },
	}
	for name, op := range ops {
		if err := op(); err == nil {
			t.Errorf("%s after Close succeeded, want an error", name)
		} else if errors.Is(err, context.Canceled) {
			t.Errorf("%s after Close returned %v, want a closed-backend error", name, err)
		}
	}
	mustNoErr(t, b.Close())
}
