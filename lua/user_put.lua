-- user_put.lua: a session belongs to its user (from hello until it ends).
--
-- KEYS[1]  user hash  <prefix>:u:{<userId>}  (sessionId -> version)
-- ARGV[1]  sessionId   ARGV[2] version
--
-- Reply: 1 when recorded, 0 when a newer entry was there.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
