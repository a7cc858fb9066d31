package redis

import (
	"sort"
	"strconv"
	"strings"
)

// sep is kombu's separator between a queue name and its priority step, and between the
// three parts of a binding member.
const sep = "\x06\x16"

// kombu's fixed key names (transport options unacked_key, unacked_index_key,
// unacked_mutex_key at their defaults).
const (
	unackedKey      = "unacked"
	unackedIndexKey = "unacked_index"
	unackedMutexKey = "unacked_mutex"
	bindingPrefix   = "_kombu.binding."
)

// keyspace turns logical names into Redis keys exactly as kombu does, global_keyprefix
// included.
type keyspace struct {
	prefix string
	steps  []int // ascending, as kombu's priority_steps
}

func (k keyspace) key(name string) string { return k.prefix + name }

func (k keyspace) unacked() string      { return k.prefix + unackedKey }
func (k keyspace) unackedIndex() string { return k.prefix + unackedIndexKey }
func (k keyspace) mutex() string        { return k.prefix + unackedMutexKey }

func (k keyspace) binding(exchange string) string { return k.prefix + bindingPrefix + exchange }

// step maps a message priority onto a priority step the way kombu does: clamp to 0..9,
// then bisect_right over the steps. Like Python's steps[-1], a priority below the first
// step wraps to the last step.
func (k keyspace) step(priority int) int {
	if priority < 0 {
		priority = 0
	}
	if priority > 9 {
		priority = 9
	}
	i := sort.Search(len(k.steps), func(i int) bool { return k.steps[i] > priority }) - 1
	if i < 0 {
		i = len(k.steps) - 1
	}
	return k.steps[i]
}

// subList is the Redis key of queue's list for the given step (kombu _q_for_pri).
func (k keyspace) subList(queue string, step int) string {
	if step == 0 {
		return k.prefix + queue
	}
	return k.prefix + queue + sep + strconv.Itoa(step)
}

// listFor is the Redis key a message of the given priority goes to.
func (k keyspace) listFor(queue string, priority int) string {
	return k.subList(queue, k.step(priority))
}

// queueKeys lists queue's sub-lists, highest priority (lowest step) first.
func (k keyspace) queueKeys(queue string) []string {
	out := make([]string, 0, len(k.steps))
	for _, s := range k.steps {
		out = append(out, k.subList(queue, s))
	}
	return out
}

// fetchKeys orders the sub-lists of queues priority-major, as kombu's _brpop_start does:
// every queue's step-0 list, then every queue's first lower step, and so on. owner[i] is
// the queue the i-th key belongs to.
func (k keyspace) fetchKeys(queues []string) (keys, owner []string) {
	keys = make([]string, 0, len(queues)*len(k.steps))
	owner = make([]string, 0, cap(keys))
	for _, s := range k.steps {
		for _, q := range queues {
			keys = append(keys, k.subList(q, s))
			owner = append(owner, q)
		}
	}
	return keys, owner
}

// bindingMember is the member kombu's _queue_bind adds to _kombu.binding.<exchange>.
func bindingMember(routingKey, pattern, queue string) string {
	return routingKey + sep + pattern + sep + queue
}

// directRoute returns the queues that the members of a _kombu.binding set route
// routingKey to under direct-exchange rules (exact routing key match), deduplicated and
// sorted for a stable order.
func directRoute(members []string, routingKey string) []string {
	seen := make(map[string]bool)
	var out []string
	for _, m := range members {
		parts := strings.SplitN(m, sep, 3)
		if len(parts) != 3 || parts[0] != routingKey || parts[2] == "" || seen[parts[2]] {
			continue
		}
		seen[parts[2]] = true
		out = append(out, parts[2])
	}
	sort.Strings(out)
	return out
}

// roundRobin is kombu's round_robin_cycle: the queue just consumed from moves to the end.
type roundRobin struct{ order []string }

func (r *roundRobin) rotate(last string) {
	for i, q := range r.order {
		if q == last {
			copy(r.order[i:], r.order[i+1:])
			r.order[len(r.order)-1] = q
			return
		}
	}
}
