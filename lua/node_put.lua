-- node_put.lua: a node registers itself, or refreshes its registration.
--
-- KEYS[1]  <prefix>:nodes:{nodes}        (sorted set nodeId -> when its registration lapses)
-- KEYS[2]  <prefix>:nodes:{nodes}:info   (hash nodeId -> registration JSON)
-- ARGV[1]  nodeId   ARGV[2] registration JSON   ARGV[3] now   ARGV[4] TTL (ms)
--
-- Reply: the number of live registrations.
--
-- A registration lapses `TTL` after its last refresh, so a node that died
-- drops out of /api/cluster by itself: readers skip lapsed entries, and each
-- refresh removes them. Both keys expire when no node refreshes any more.
local set, info = KEYS[1], KEYS[2]
local id, json, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', info, id, json)
redis.call('ZADD', set, now + ttl, id)
for _, gone in ipairs(redis.call('ZRANGE', set, '-inf', now, 'BYSCORE')) do
  redis.call('HDEL', info, gone)
end
redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
for _, key in ipairs({ set, info }) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return redis.call('ZCARD', set)
