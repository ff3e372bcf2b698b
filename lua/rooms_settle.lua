-- rooms_settle.lua: moves a room's entry in the rooms-by-deadline index
-- after the sweeper checked the room's due members.
--
-- KEYS[1]  <prefix>:rx:{<0..15>}   (sorted set roomId -> no later than the room's earliest expiry entry)
-- ARGV[1]  roomId   ARGV[2] the entry's score when the sweeper read it
-- ARGV[3]  the room's earliest expiry entry now ('' when it has none)
--
-- Reply: 1 when the entry was moved or removed, 0 when it had changed since
-- (a writer filed the room again; its score stands).
--
-- The room's keys live in another slot, so this cannot look at the room.
-- Writers lower the entry after they write the room (ZADD LT, or a plain
-- ZADD when the room's expiry index was empty); the sweeper raises it only
-- from the score it read, then reads the room again and lowers the entry if
-- a member was filed meanwhile. So the entry is never later than the room's
-- earliest expiry entry for longer than that second read.
local key, room, seen, earliest = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('ZSCORE', key, room)
if not cur or tonumber(cur) ~= tonumber(seen) then return 0 end
if earliest == '' then
  redis.call('ZREM', key, room)
else
  redis.call('ZADD', key, earliest, room)
end
return 1
