package badger

import (
	"context"
	"strings"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
)

type watcher struct {
	prefix string
	ch     chan storage.Event
}

// Watch streams changes under prefix, starting with the next write; it sends
// no snapshot, so callers Watch first and then List. The channel closes when
// ctx ends, when the backend closes, or when the watcher falls more than
// Config.WatchBufferSize events behind (see the package doc). Event values
// are shared between watchers and must be treated as read-only.
func (b *Backend) Watch(ctx context.Context, prefix string) (<-chan storage.Event, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, trace.Wrap(err)
	}
	exit, err := b.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer exit()

	w := &watcher{prefix: prefix, ch: make(chan storage.Event, b.cfg.WatchBufferSize)}
	b.watchMu.Lock()
	b.watchers[w] = struct{}{}
	b.watchMu.Unlock()

	// enter() holds off Close, so this Add cannot race Close's Wait.
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		select {
		case <-ctx.Done():
		case <-b.done:
		}
		b.removeWatcher(w)
	}()
	return w.ch, nil
}

func (b *Backend) removeWatcher(w *watcher) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if _, ok := b.watchers[w]; ok {
		delete(b.watchers, w)
		close(w.ch)
	}
}

// publish fans events out without ever blocking: a watcher whose buffer is
// full is dropped (its channel closed) so one slow reader cannot stall every
// writer.
func (b *Backend) publish(events []storage.Event) {
	if len(events) == 0 {
		return
	}
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	for w := range b.watchers {
		for _, ev := range events {
			if !strings.HasPrefix(ev.Item.Key, w.prefix) {
				continue
			}
			select {
			case w.ch <- ev:
				continue
			default:
			}
			b.log.Warn("Dropping slow storage watcher; it must re-sync.", "prefix", w.prefix, "buffer", cap(w.ch))
			delete(b.watchers, w)
			close(w.ch)
			break
		}
	}
}
