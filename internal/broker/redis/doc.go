// Package redis is the fleet's Redis broker: kombu's Redis transport (kombu 5.2.4,
// transport/redis.py) re-implemented key for key behind broker.Broker, so that Go and
// Python Celery workers share queues and recover each other's lost messages.
//
// It owns these keys, all under kombu's global_keyprefix (Options.KeyPrefix):
//
//   - <queue>, <queue>\x06\x16<step>: the priority sub-lists; producers LPUSH, consumers
//     pop from the right, steps in ascending order (0 is the highest priority).
//   - _kombu.binding.<exchange>: binding sets, member "rk\x06\x16pattern\x06\x16queue".
//   - unacked (hash tag → JSON [envelope, exchange, routing_key]) and unacked_index (zset
//     tag → epoch seconds): the leases of delivered, unsettled messages.
//   - unacked_mutex: the lock of the restore sweep (SET NX PX, compare-and-delete).
//
// Fetching runs a Lua script that pops from the first non-empty sub-list
// (priority-major over all consumed queues, kombu's round robin between queues) and
// records the lease in the same atomic step, so a message is at every instant either in
// a list or in unacked: no crash can lose it. One script call pops up to 64 messages
// this way (as many as the prefetch limit leaves room for; when only a few slots are
// free it waits up to 1 ms for more), each leased before the next is popped, in the
// order single fetches would take them. Acks made while another is in flight are
// removed together in one MULTI/EXEC; each Ack returns once its own lease is gone. kombu instead blocks in BRPOP and records
// the lease afterwards, losing the message when the worker dies in between; this
// package never uses BRPOP. While every list is empty it polls, the wait doubling from
// 1 ms up to Options.PollInterval (50 ms by default), which bounds the pickup delay of
// an idle worker and costs Redis about 20 script calls a second per idle consumer.
//
// Leases are refreshed (ZADD XX) while a delivery is unsettled, so no sweep, Python's
// or ours, restores work in progress. The sweep restores leases older than the
// visibility timeout the way kombu's restore_visible does (exchange "" → the routing
// key's queue, otherwise the direct bindings of the exchange), marked redelivered.
// KeyPrefix, VisibilityTimeout and PrioritySteps must match the Python side's
// broker_transport_options (global_keyprefix, visibility_timeout, priority_steps). The
// prefetch limit is per Broker, shared by all its Consume calls.
//
// A sweeper that dies holding unacked_mutex blocks kombu's sweeps for 5 minutes. Ours
// hold it for a few sweep periods at most, and sweep without it once another holder has
// kept it for longer than the visibility timeout: restores stay exactly-once because each
// one is an atomic, record-checked script.
//
// Departures from kombu, none visible to Python peers: restored and requeued messages go
// to their priority's sub-list rather than always the bare queue; a lease that cannot be
// routed is left in place (kombu drops it); restores compare the lease record first, so
// a tag that someone else re-leased is never restored twice; publishing to a named
// exchange gives each bound queue its own delivery tag. Publish to a named exchange
// routes direct only; Celery's fanout traffic (events, pidbox) goes through Broadcast and
// Subscribe over pub/sub (fanout.go).
package redis
