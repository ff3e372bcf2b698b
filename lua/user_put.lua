-- user_put.lua: a session belongs to its user (from hello until it ends),
-- with the status it last had: the user's derived status, and so the
-- lifecycle events user.online and user.status, are decided here, once.
--
-- KEYS[i]  user hash  <prefix>:u:{<userId>}  (sessionId -> '<version>|<status>|<lastActiveAt>')
--          (one slot on Redis Cluster; any on one server)
-- ARGV[1]  most sessions a user may hold
-- then 5 per key, from ARGV[2]: sessionId, version, status, lastActiveAt,
--   'add' (hello: the session may be new to the user) or 'set' (a status
--   change: only an entry that is there is updated, so a late one cannot
--   bring back a session that ended)
--
-- Reply: per key {code, before, after}: code 1 when recorded, 0 when a newer
-- entry was there (or 'set' found none), -1 when the session is new to the
-- user and the user already holds ARGV[1] sessions (nothing is written; the
-- caller ends the session it just claimed); `before` and `after` are the
-- user's derived status around this entry ('offline': no session).
--
-- The derived status is `user_status` of the prelude.
local max = tonumber(ARGV[1])
local reply = {}
for i, key in ipairs(KEYS) do
  local a = 5 * i - 3
  local sid, version, status, active_at, mode = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local before = user_status(key)
  local cur = redis.call('HGET', key, sid)
  local code = 1
  if cur and tonumber(string.match(cur, '^(%d+)')) >= version then
    code = 0
  elseif not cur and mode ~= 'add' then
    code = 0
  elseif not cur and redis.call('HLEN', key) >= max then
    code = -1
  else
    redis.call('HSET', key, sid, version .. '|' .. status .. '|' .. active_at)
  end
  reply[i] = { code, before, code == 1 and user_status(key) or before }
end
return reply
