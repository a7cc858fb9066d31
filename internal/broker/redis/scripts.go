package redis

import goredis "github.com/redis/go-redis/v9"

// fetchScript pops up to ARGV[2] elements and records the lease of each in the same
// atomic step, so that no crash can lose a popped message: the message is always either
// in a list or in unacked. Each pop takes from the first non-empty list in
// priority-major order, and the queue it came from moves to the end of the queue order
// (kombu's round_robin_cycle), exactly as successive single fetches would.
//
//	KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3..] the lists: for each priority step,
//	one per queue in the current queue order
//	ARGV[1] now (epoch seconds), ARGV[2] the most elements to pop, ARGV[3] a fresh tag for
//	an element without a usable delivery_tag, ARGV[4] the number of queues nq,
//	ARGV[5..4+nq] the queue names in the current order
//
// Returns a flat array, five values per element popped: q, element, tag, record, raw. q is
// the 1-based position of the element's queue in the order passed in. raw is 0 when the
// element is a kombu envelope with a delivery_tag: the lease's record is kombu's
// [envelope, exchange, routing_key], and what is returned of it is only its tail, the
// JSON-encoded `exchange,routing_key` (the record is '[' element ',' tail ']', rebuilt by
// the caller when it needs it, so that a prefetched message is not held twice). raw is 1
// when Lua could not read one: the lease is then under ARGV[3] and the whole record,
// returned as is, holds the element as a JSON string routed to its queue, until the
// caller replaces it. At most one element per call is leased under the fresh tag: the
// call ends after it.
var fetchScript = goredis.NewScript(`
local nq = tonumber(ARGV[4])
local want = tonumber(ARGV[2])
local order, empty, out = {}, {}, {}
for q = 1, nq do order[q] = q end
local fresh = ARGV[3]
local n = 0
while n < want and fresh do
  local item, q
  for k = 3, #KEYS, nq do
    for p = 1, nq do
      local key = k + order[p] - 1
      if not empty[key] then
        item = redis.call('RPOP', KEYS[key])
        if item then
          q = order[p]
          table.remove(order, p)
          order[nq] = q
          break
        end
        empty[key] = true
      end
    end
    if item then break end
  end
  if not item then break end
  local tag, rec, ret, raw = nil, nil, nil, 0
  local ok, env = pcall(cjson.decode, item)
  if ok and type(env) == 'table' and type(env.properties) == 'table' then
    local pr = env.properties
    if type(pr.delivery_tag) == 'string' and pr.delivery_tag ~= '' then
      tag = pr.delivery_tag
      local ex, rk = '', ''
      local di = pr.delivery_info
      if type(di) == 'table' then
        if type(di.exchange) == 'string' then ex = di.exchange end
        if type(di.routing_key) == 'string' then rk = di.routing_key end
      end
      ret = cjson.encode(ex) .. ',' .. cjson.encode(rk)
      rec = '[' .. item .. ',' .. ret .. ']'
    end
  end
  if not tag then
    tag, raw, fresh = fresh, 1, nil
    rec = '[' .. cjson.encode(item) .. ',"",' .. cjson.encode(ARGV[4 + q]) .. ']'
    ret = rec
  end
  redis.call('ZADD', KEYS[2], ARGV[1], tag)
  redis.call('HSET', KEYS[1], tag, rec)
  out[#out + 1] = q
  out[#out + 1] = item
  out[#out + 1] = tag
  out[#out + 1] = ret
  out[#out + 1] = raw
  n = n + 1
end
return out
`)

// restoreScript removes a lease and pushes its (redelivered) envelope onto the consuming
// end of each destination list: kombu's restore_by_tag as one atomic step.
//
//	KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3..] destination lists
//	ARGV[1] tag, ARGV[2] expected unacked record ("" = any), ARGV[3] envelope to push,
//	ARGV[4] score ceiling ("" = none): leave the lease if it was refreshed after this
//
// Returns 1 when restored, 0 when the lease no longer exists (someone settled or restored
// it; a stray unacked_index entry is removed), -1 when the record differs (someone else
// holds the tag now), -2 when the lease was refreshed after the ceiling.
var restoreScript = goredis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] ~= '' and cur ~= ARGV[2] then return -1 end
if ARGV[4] ~= '' then
  local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if s and tonumber(s) > tonumber(ARGV[4]) then return -2 end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[3]) end
return 1
`)

// deadLetterScript publishes the dead-letter envelope, declares its queue the way kombu
// does, and removes the original lease, atomically.
//
//	KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] dead-letter list,
//	KEYS[4] _kombu.binding.<dlq>
//	ARGV[1] tag, ARGV[2] expected unacked record, ARGV[3] envelope, ARGV[4] binding member
//
// Returns 1 when the lease was removed, 0 when it was already gone, -1 when someone else
// holds the tag now (their lease is left alone). The envelope is published in every case.
var deadLetterScript = goredis.NewScript(`
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if cur ~= ARGV[2] then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`)

// unlockScript releases unacked_mutex only if we still own it (redis-py Lock.release).
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)
