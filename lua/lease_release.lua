-- lease_release.lua: a holder gives the reaper lease up (on shutdown), so
-- that another node takes it at once instead of after the lease runs out.
--
-- KEYS[1]  <prefix>:lease:{lease}   KEYS[2] <prefix>:lease:{lease}:term
-- ARGV[1]  nodeId   ARGV[2] term
--
-- Reply: 1 when released, 0 when the lease was not (or no longer) held by
-- that node with that term.
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local l = cjson.decode(cur)
if l.nodeId ~= ARGV[1] or tostring(l.term) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
