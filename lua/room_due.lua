-- room_due.lua: the members of a room whose session the sweeper must check.
--
-- KEYS[1]  members  <prefix>:r:{<roomId>}:m
-- KEYS[2]  expiry   <prefix>:r:{<roomId>}:x   (sorted set sessionId -> when to check)
-- ARGV[1]  now   ARGV[2] at most this many
--
-- Reply: [sessionId1, '<version>|<userId>|<member JSON>', sessionId2, ...]
--
-- A member's entry comes due a while (the session key's TTL margin) after
-- its session's removal deadline as of the member's last projection. By
-- then the session is gone, or it is alive and the sweeper files the entry
-- again, or it no longer lists this room (a removal that never reached the
-- room: its node died between the two writes). The sweeper reads the
-- session (another slot) and removes the member with room_del.lua in the
-- first and last case, so no room keeps a member its session does not have.
-- Entries without a member (left over) are dropped here.
local members, expiry = KEYS[1], KEYS[2]
local due = redis.call('ZRANGE', expiry, '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, sid in ipairs(due) do
  local m = redis.call('HGET', members, sid)
  if m then
    out[#out + 1] = sid
    out[#out + 1] = m
  else
    redis.call('ZREM', expiry, sid)
  end
end
return out
