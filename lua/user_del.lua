-- user_del.lua: sessions are no longer their users' (one on the live
-- paths, many at once when the reaper culls a dead node's sessions). The
-- lifecycle events user.offline and user.status of a removal are decided
-- here, once, and an offline user's last seen is kept.
--
-- KEYS[2i-1]  user hash       <prefix>:u:{<userId>}  (sessionId -> '<version>|<status>|<lastActiveAt>')
-- KEYS[2i]    its last seen   <prefix>:seen:{<userId>}  (la: last activity, at: when the last session ended)
--             (one slot on Redis Cluster; any on one server)
-- ARGV[1]  now   ARGV[2] how long last seen is kept (ms)
-- then 3 per entry, from ARGV[3]: the sessionId and version to remove, and
--   the session's last activity as its own hash had it when it ended (the
--   user hash's copy is only as new as the session's last status change)
--
-- Reply: per entry {left, before, after, lastSeenAt}: the number of
-- sessions its user has left, the user's derived status before and after
-- (as user_put.lua derives it; 'offline': none), and the user's last
-- activity as kept. An entry newer than `version` (the id was claimed again
-- since) is kept.
local now, keep = ARGV[1], tonumber(ARGV[2])
local reply = {}
for i = 1, #KEYS / 2 do
  local key, seen = KEYS[2 * i - 1], KEYS[2 * i]
  local sid, version, ended_la = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local before = user_status(key)
  local cur = redis.call('HGET', key, sid)
  local after = before
  if cur and tonumber(string.match(cur, '^(%d+)')) <= version then
    redis.call('HDEL', key, sid)
    local active_at = math.max(tonumber(string.match(cur, '^%d+|%a+|(%d+)') or '0'), ended_la)
    local la = tonumber(redis.call('HGET', seen, 'la') or '0')
    if active_at > la then
      la = active_at
      redis.call('HSET', seen, 'la', la)
    end
    after = user_status(key)
    if after == 'offline' then redis.call('HSET', seen, 'at', now) end
    redis.call('PEXPIRE', seen, keep)
  end
  reply[i] = { redis.call('HLEN', key), before, after, tonumber(redis.call('HGET', seen, 'la') or '0') }
end
return reply
