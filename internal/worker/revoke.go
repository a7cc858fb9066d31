package worker

import (
	"context"
	"sync"
	"time"
)

// RevokedStore is the set of revoked task ids the worker consults when a message arrives
// and again before it runs. The default is a MemoryRevoked per worker (Celery's
// in-memory LimitedSet); a fleet-wide store (e.g. in Redis) can replace it.
type RevokedStore interface {
	// Add marks ids as revoked.
	Add(ctx context.Context, ids ...string) error
	// Contains reports whether id is revoked. It is called for every message (twice), so
	// it must be fast, and a store that goes over the network must bound its own latency.
	Contains(ctx context.Context, id string) (bool, error)
	// List returns the revoked ids with when they were revoked (`inspect revoked`, the
	// mingle `hello` reply).
	List(ctx context.Context) (map[string]time.Time, error)
}

// Celery's worker_state defaults (celery/worker/state.py): REVOKES_MAX and REVOKE_EXPIRES.
const (
	DefaultRevokedMax    = 50000
	DefaultRevokedExpiry = 3 * time.Hour
)

// MemoryRevoked is Celery's LimitedSet for revoked ids: at most Max entries, each
// forgotten Expiry after it was (last) added; when full, the oldest goes first.
type MemoryRevoked struct {
	max    int
	expiry time.Duration
	now    func() time.Time

	mu    sync.Mutex
	added map[string]revokedEntry
	order []revokedEntry // insertion order; stale entries (re-added since) are skipped
	head  int
	seq   uint64
}

type revokedEntry struct {
	id  string
	at  time.Time
	seq uint64 // tells a re-added id's old entry in order from its current one
}

// NewMemoryRevoked returns an empty set; max <= 0 and expiry <= 0 take Celery's
// defaults (50000, 3 h).
func NewMemoryRevoked(max int, expiry time.Duration) *MemoryRevoked {
	if max <= 0 {
		max = DefaultRevokedMax
	}
	if expiry <= 0 {
		expiry = DefaultRevokedExpiry
	}
	return &MemoryRevoked{max: max, expiry: expiry, now: time.Now, added: map[string]revokedEntry{}}
}

// Add marks ids as revoked now.
func (m *MemoryRevoked) Add(_ context.Context, ids ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, id := range ids {
		if id == "" {
			continue
		}
		m.seq++
		e := revokedEntry{id: id, at: now, seq: m.seq}
		m.added[id] = e
		m.order = append(m.order, e)
	}
	m.purge(now)
	return nil
}

// Contains reports whether id was revoked less than the expiry ago.
func (m *MemoryRevoked) Contains(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.added[id]
	if !ok {
		return false, nil
	}
	if m.now().Sub(e.at) >= m.expiry {
		delete(m.added, id)
		return false, nil
	}
	return true, nil
}

// List returns the live entries.
func (m *MemoryRevoked) List(context.Context) (map[string]time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.purge(m.now())
	out := make(map[string]time.Time, len(m.added))
	for id, e := range m.added {
		out[id] = e.at
	}
	return out, nil
}

// Len is the number of live entries.
func (m *MemoryRevoked) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.purge(m.now())
	return len(m.added)
}

// purge drops expired entries and, past max, the oldest ones. Callers hold m.mu.
func (m *MemoryRevoked) purge(now time.Time) {
	for m.head < len(m.order) {
		e := m.order[m.head]
		cur, ok := m.added[e.id]
		switch {
		case !ok || cur.seq != e.seq:
			// stale: re-added later or already gone
		case now.Sub(e.at) >= m.expiry || len(m.added) > m.max:
			delete(m.added, e.id)
		default:
			m.compact()
			return
		}
		m.head++
	}
	m.compact()
}

// compact releases the consumed prefix of order once it dominates, and rebuilds order
// from the live entries when re-added ids have filled it with stale ones.
func (m *MemoryRevoked) compact() {
	switch {
	case len(m.order)-m.head > 4*m.max+1024:
		live := make([]revokedEntry, 0, len(m.added))
		for _, e := range m.order[m.head:] {
			if cur, ok := m.added[e.id]; ok && cur.seq == e.seq {
				live = append(live, e)
			}
		}
		m.order, m.head = live, 0
	case m.head > 1024 && m.head*2 > len(m.order):
		m.order = append([]revokedEntry(nil), m.order[m.head:]...)
		m.head = 0
	}
}

var _ RevokedStore = (*MemoryRevoked)(nil)
