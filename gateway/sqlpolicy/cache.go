package sqlpolicy

import (
	"container/list"
	"strings"
	"sync"
)

// lru is a fixed-size least-recently-used map from statement text to Result.
// One mutex is enough: a hit costs a map lookup and a list move, far below
// the network round trip it sits on.
type lru struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *lruEntry
	items map[string]*list.Element
}

type lruEntry struct {
	key string
	val Result
}

func newLRU(max int) *lru {
	return &lru{max: max, order: list.New(), items: make(map[string]*list.Element, max)}
}

func (l *lru) get(key string) (Result, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.items[key]
	if !ok {
		return Result{}, false
	}
	l.order.MoveToFront(el)
	return el.Value.(*lruEntry).val, true
}

func (l *lru) add(key string, val Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.items[key]; ok {
		el.Value.(*lruEntry).val = val
		l.order.MoveToFront(el)
		return
	}
	// The caller's string may alias a connection read buffer that is
	// reused for the next message; keep a copy we own.
	key = strings.Clone(key)
	l.items[key] = l.order.PushFront(&lruEntry{key: key, val: val})
	for l.order.Len() > l.max {
		oldest := l.order.Back()
		l.order.Remove(oldest)
		delete(l.items, oldest.Value.(*lruEntry).key)
	}
}

func (l *lru) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
