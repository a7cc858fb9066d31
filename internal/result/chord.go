package result

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// GroupKeyPrefix is the prefix of Celery's group keys: celery-taskset-meta-<gid> holds a
// saved GroupResult, and the chord counter uses <key>.j (the finished parts), <key>.t (extra
// parts from add_to_chord) and <key>.s (the header size).
const GroupKeyPrefix = "celery-taskset-meta-"

// GroupKey returns the key of group gid, with suffix "" (saved GroupResult), ".j", ".t"
// or ".s".
func GroupKey(gid, suffix string) string { return GroupKeyPrefix + gid + suffix }

// ChordBackend is a result backend that can count chord completions. Celery's Redis
// backend can; rpc:// cannot (Celery raises NotImplementedError for chords on it).
type ChordBackend interface {
	Backend
	// SetChordSize records the header size of chord gid, as the producer of a chord does
	// (set_chord_size: SETEX <key>.s + PUBLISH).
	SetChordSize(ctx context.Context, gid string, size int) error
	// ChordPartReturn records one finished header task and reports whether the chord is
	// complete (Celery's on_chord_part_return). It returns nil while parts are missing,
	// and for the call that completes the chord the header results in order, or the
	// ChordError the body must fail with.
	ChordPartReturn(ctx context.Context, p ChordPart) (*ChordReady, error)
	// ChordCleanup deletes the counter keys once the body was sent.
	ChordCleanup(ctx context.Context, gid string) error
}

// ChordPart is one finished chord header task.
type ChordPart struct {
	GroupID string
	TaskID  string
	// GroupIndex is its position in the header; nil scores +inf (after every indexed part).
	GroupIndex *int
	State      string // SUCCESS, FAILURE or REVOKED
	// Result is the JSON value of a SUCCESS, or a protocol.ExceptionInfo.
	Result any
}

// ChordReady is the outcome of the part that completed a chord.
type ChordReady struct {
	// Results are the header results in header order: the body's first argument.
	Results []any
	// Err, when set, means a header task failed or the join failed: the body is not sent,
	// it fails with Err (celery.exceptions.ChordError) and its errbacks run.
	Err *ChordError
}

// ChordError is celery.exceptions.ChordError(Message).
type ChordError struct{ Message string }

func (e *ChordError) Error() string { return "ChordError: " + e.Message }

// Exception is the JSON form stored as the body's FAILURE.
func (e *ChordError) Exception() protocol.ExceptionInfo {
	return Exception("ChordError", ModuleCeleryExceptions, e.Message)
}

var _ ChordBackend = (*RedisBackend)(nil)

// SetChordSize writes <group>.s the way Celery's RedisBackend.set does: SETEX with the
// result expiry (SET without it) and PUBLISH of the same value, in one MULTI.
func (b *RedisBackend) SetChordSize(ctx context.Context, gid string, size int) error {
	if gid == "" {
		return errors.New("result: redis: set chord size: empty group id")
	}
	key := GroupKey(gid, ".s")
	val := strconv.Itoa(size)
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if b.expires > 0 {
			p.SetEx(ctx, key, val, ttlSeconds(b.expires))
		} else {
			p.Set(ctx, key, val, 0)
		}
		p.Publish(ctx, key, val)
		return nil
	})
	if err != nil {
		return fmt.Errorf("result: redis: set chord size of %s: %w", gid, err)
	}
	return nil
}

// ChordPartReturn is Celery 5.2's RedisBackend.on_chord_part_return with the default
// result_chord_ordered: in one MULTI, ZADD <g>.j <group_index|+inf> '[1, tid, state,
// result]', ZCOUNT <g>.j -inf +inf, GET <g>.t, GET <g>.s and EXPIRE of the three keys; when
// the count reaches size + extra, the results are read back (ZRANGE <g>.j 0 -1, or the
// saved GroupResult of a nested header) and returned. Python and Go workers running this
// same sequence on the same keys fire the body once between them.
func (b *RedisBackend) ChordPartReturn(ctx context.Context, p ChordPart) (*ChordReady, error) {
	if p.GroupID == "" || p.TaskID == "" {
		return nil, nil
	}
	jkey, tkey, skey := GroupKey(p.GroupID, ".j"), GroupKey(p.GroupID, ".t"), GroupKey(p.GroupID, ".s")
	member, err := protocol.MarshalJSON([]any{1, p.TaskID, p.State, chordValue(p.Result)})
	if err != nil {
		return nil, fmt.Errorf("result: redis: chord %s: encode part %s: %w", p.GroupID, p.TaskID, err)
	}
	score := "+inf"
	if p.GroupIndex != nil {
		score = strconv.Itoa(*p.GroupIndex)
	}
	var count *redis.IntCmd
	var extra, size *redis.StringCmd
	_, err = b.client.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		pl.Do(ctx, "ZADD", jkey, score, member)
		count = pl.ZCount(ctx, jkey, "-inf", "+inf")
		extra = pl.Get(ctx, tkey)
		size = pl.Get(ctx, skey)
		if b.expires > 0 {
			ttl := ttlSeconds(b.expires)
			pl.Expire(ctx, jkey, ttl)
			pl.Expire(ctx, tkey, ttl)
			pl.Expire(ctx, skey, ttl)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("result: redis: chord %s: count part %s: %w", p.GroupID, p.TaskID, err)
	}
	sizeStr, err := size.Result()
	if errors.Is(err, redis.Nil) || sizeStr == "" {
		return nil, nil // the size is not known (yet): the part that completes it fires
	}
	if err != nil {
		return nil, fmt.Errorf("result: redis: chord %s: read size: %w", p.GroupID, err)
	}
	total, err := strconv.Atoi(strings.TrimSpace(sizeStr))
	if err != nil {
		return nil, fmt.Errorf("result: redis: chord %s: size %q is not an integer", p.GroupID, sizeStr)
	}
	if x, err := extra.Result(); err == nil && x != "" {
		n, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil {
			return nil, fmt.Errorf("result: redis: chord %s: extra size %q is not an integer", p.GroupID, x)
		}
		total += n
	}
	if count.Val() != int64(total) {
		return nil, nil
	}

	saved, err := b.client.Get(ctx, GroupKey(p.GroupID, "")).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return nil, fmt.Errorf("result: redis: chord %s: read saved group: %w", p.GroupID, err)
	default:
		return b.joinSavedGroup(ctx, p.GroupID, saved)
	}

	entries, err := b.client.ZRange(ctx, jkey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("result: redis: chord %s: read parts: %w", p.GroupID, err)
	}
	ready := &ChordReady{Results: make([]any, 0, len(entries))}
	for _, e := range entries {
		v, err := protocol.ParseJSON([]byte(e))
		if err != nil {
			return nil, fmt.Errorf("result: redis: chord %s: decode part: %w", p.GroupID, err)
		}
		tup, ok := v.([]any)
		if !ok || len(tup) != 4 {
			return nil, fmt.Errorf("result: redis: chord %s: part %q is not [1, id, state, result]", p.GroupID, e)
		}
		tid, _ := tup[1].(string)
		state, _ := tup[2].(string)
		if state == protocol.StateFailure || state == protocol.StateRevoked {
			ready.Err = &ChordError{Message: fmt.Sprintf("Dependency %s raised %s", tid, ValueRepr(state, tup[3]))}
			return ready, nil
		}
		ready.Results = append(ready.Results, tup[3])
	}
	return ready, nil
}

// joinSavedGroup is the GroupResult.restore + join branch: a header with nested groups was
// saved by the producer, and the results keep that nesting. A failed or unfinished member
// gives ChordError("Join error: ...").
func (b *RedisBackend) joinSavedGroup(ctx context.Context, gid string, saved []byte) (*ChordReady, error) {
	v, err := protocol.ParseJSON(saved)
	if err != nil {
		return nil, fmt.Errorf("result: redis: chord %s: decode saved group: %w", gid, err)
	}
	doc, _ := v.(map[string]any)
	tup, _ := doc["result"].([]any)
	if len(tup) != 2 {
		return nil, fmt.Errorf("result: redis: chord %s: saved group is not a result tuple", gid)
	}
	children, _ := tup[1].([]any)
	ready := &ChordReady{Results: make([]any, 0, len(children))}
	for _, c := range children {
		val, jerr, err := b.joinTuple(ctx, c, 0)
		if err != nil {
			return nil, fmt.Errorf("result: redis: chord %s: %w", gid, err)
		}
		if jerr != "" {
			ready.Err = &ChordError{Message: "Join error: " + jerr}
			return ready, nil
		}
		ready.Results = append(ready.Results, val)
	}
	return ready, nil
}

// joinTuple returns the value of a result tuple ([[id, parent], children]): a task's
// result, or the list of a group's. joinErr is the repr of the exception get() raises.
func (b *RedisBackend) joinTuple(ctx context.Context, tup any, depth int) (value any, joinErr string, err error) {
	if depth > 32 {
		return nil, "", errors.New("saved group nested too deeply")
	}
	t, _ := tup.([]any)
	if len(t) != 2 {
		return nil, "", fmt.Errorf("bad result tuple %v", tup)
	}
	head, _ := t[0].([]any)
	if len(head) < 1 {
		return nil, "", fmt.Errorf("bad result tuple %v", tup)
	}
	if kids, ok := t[1].([]any); ok {
		out := make([]any, 0, len(kids))
		for _, k := range kids {
			v, je, err := b.joinTuple(ctx, k, depth+1)
			if err != nil || je != "" {
				return nil, je, err
			}
			out = append(out, v)
		}
		return out, "", nil
	}
	id, _ := head[0].(string)
	meta, err := b.Get(ctx, id)
	if err != nil {
		return nil, "", err
	}
	if meta == nil {
		return nil, fmt.Sprintf("TimeoutError('result of %s is not ready')", id), nil
	}
	status, _ := meta["status"].(string)
	switch status {
	case protocol.StateSuccess:
		return meta["result"], "", nil
	case protocol.StateFailure, protocol.StateRevoked:
		return nil, ValueRepr(status, meta["result"]), nil
	}
	return nil, fmt.Sprintf("TimeoutError('result of %s is %s')", id, status), nil
}

// chordValue is Celery's encode_result: exceptions as {exc_type, exc_message, exc_module}.
func chordValue(v any) any {
	switch e := v.(type) {
	case protocol.ExceptionInfo:
		if e.Message == nil {
			e.Message = []any{}
		}
		return e
	case *protocol.ExceptionInfo:
		if e == nil {
			return nil
		}
		return chordValue(*e)
	}
	return v
}

// ValueRepr is Python's repr() of a stored result: for an exception state the exception
// (ValueError('boom')), otherwise the value.
func ValueRepr(state string, v any) string {
	if state == protocol.StateFailure || state == protocol.StateRevoked || state == protocol.StateRetry {
		if m, ok := v.(map[string]any); ok {
			if typ, ok := m["exc_type"].(string); ok {
				return ExceptionRepr(protocol.ExceptionInfo{Type: typ, Message: excArgs(m["exc_message"])})
			}
		}
		if e, ok := v.(protocol.ExceptionInfo); ok {
			return ExceptionRepr(e)
		}
	}
	return protocol.Repr(v)
}

func excArgs(v any) []any {
	switch a := v.(type) {
	case []any:
		return a
	case nil:
		return []any{}
	}
	return []any{v}
}

// ExceptionRepr is Python's repr() of the exception e describes: Type('message'),
// Type('a', 42), Type().
func ExceptionRepr(e protocol.ExceptionInfo) string {
	parts := make([]string, len(e.Message))
	for i, a := range e.Message {
		parts[i] = protocol.Repr(a)
	}
	return e.Type + "(" + strings.Join(parts, ", ") + ")"
}

// ChordCleanup deletes <g>.j, <g>.t and <g>.s, as Celery does once the body was sent.
func (b *RedisBackend) ChordCleanup(ctx context.Context, gid string) error {
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, GroupKey(gid, ".j"))
		p.Del(ctx, GroupKey(gid, ".t"))
		p.Del(ctx, GroupKey(gid, ".s"))
		return nil
	})
	if err != nil {
		return fmt.Errorf("result: redis: clean up chord %s: %w", gid, err)
	}
	return nil
}
