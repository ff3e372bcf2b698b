-- lease.lua: takes or renews the reaper lease.
--
-- KEYS[1]  <prefix>:lease:{lease}        (the lease, JSON, with a TTL of its length)
-- KEYS[2]  <prefix>:lease:{lease}:term   (the last term handed out)
-- ARGV[1]  nodeId   ARGV[2] now   ARGV[3] lease length (ms)
--
-- Reply: the lease as it is after the call, JSON { nodeId, term, leaseUntil }:
-- held by someone else (unchanged), renewed (same term, later leaseUntil),
-- or taken because no one held it (a new, higher term).
--
-- The key's TTL is the lease: a holder that stops renewing (crashed, paused,
-- cut off) loses it when the TTL runs out, whatever its own clock says.
local lease, terms = KEYS[1], KEYS[2]
local node, now, ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('GET', lease)
if cur then
  local l = cjson.decode(cur)
  if l.nodeId ~= node then return cur end
  l.leaseUntil = now + ms
  cur = cjson.encode(l)
  redis.call('SET', lease, cur, 'PX', ms)
  return cur
end
-- Terms start from the current time, so that they keep growing even if
-- Redis lost the counter (a restart without persistence): sessions keep the
-- highest term that swept them, and a lower one would be fenced out.
if redis.call('EXISTS', terms) == 0 then redis.call('SET', terms, now) end
local term = redis.call('INCR', terms)
cur = cjson.encode({ nodeId = node, term = term, leaseUntil = now + ms })
redis.call('SET', lease, cur, 'PX', ms)
return cur
