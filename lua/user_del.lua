-- user_del.lua: a session is no longer one of its user's.
--
-- KEYS[1]  user hash  <prefix>:u:{<userId>}  (sessionId -> version)
-- ARGV[1]  sessionId   ARGV[2] version
--
-- Reply: the number of sessions the user has left. An entry newer than
-- `version` (the id was claimed again since) is kept.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return redis.call('HLEN', KEYS[1])
