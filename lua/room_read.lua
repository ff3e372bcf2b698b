-- room_read.lua: a room's seq and members, read atomically.
--
-- KEYS[1]  members   KEYS[2] seq
-- Reply: [seq, sessionId1, '<version>|<userId>', sessionId2, ...]
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, seq)
return out
