-- nodes_read.lua: the live registrations of nodes.
--
-- KEYS[1]  <prefix>:nodes:{nodes}        (sorted set nodeId -> when its registration lapses)
-- KEYS[2]  <prefix>:nodes:{nodes}:info   (hash nodeId -> registration JSON)
-- ARGV[1]  now
--
-- Reply: the registrations (JSON) that have not lapsed, by node id.
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], '+inf', 'BYSCORE')
table.sort(ids)
local out = {}
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[2], id)
  if json then out[#out + 1] = json end
end
return out
