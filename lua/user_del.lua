-- user_del.lua: sessions are no longer their users' (one on the live
-- paths, many at once when the reaper culls a dead node's sessions).
--
-- KEYS[1..n]  user hashes  <prefix>:u:{<userId>}  (sessionId -> version)
--             (one slot on Redis Cluster; any on one server)
-- ARGV[2i-1], ARGV[2i]  the sessionId and version to remove from KEYS[i]
--
-- Reply: per key, the number of sessions its user has left. An entry newer
-- than `version` (the id was claimed again since) is kept.
local reply = {}
for i, key in ipairs(KEYS) do
  local sid, version = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local cur = redis.call('HGET', key, sid)
  if cur and tonumber(cur) <= version then
    redis.call('HDEL', key, sid)
  end
  reply[i] = redis.call('HLEN', key)
end
return reply
