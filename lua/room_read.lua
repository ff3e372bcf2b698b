-- room_read.lua: a room's seq and members, read atomically.
--
-- KEYS[1]  members   KEYS[2] seq
-- Reply: [seq, sessionId1, '<version>|<userId>|<member JSON>', sessionId2, ...]
-- The whole view of the room in one round trip: room_put.lua keeps each
-- member's projection (status, handle, state, timestamps) in the members hash.
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, seq)
return out
