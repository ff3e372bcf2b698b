-- user_put.lua: a session belongs to its user (from hello until it ends).
--
-- KEYS[1]  user hash  <prefix>:u:{<userId>}  (sessionId -> version)
-- ARGV[1]  sessionId   ARGV[2] version   ARGV[3] most sessions a user may hold
--
-- Reply: 1 when recorded, 0 when a newer entry was there, -1 when the session
-- is new to the user and the user already holds ARGV[3] sessions (nothing
-- is written; the caller ends the session it just claimed).
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
if not cur and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
