-- room_put.lua: a room learns that a session joined it or changed.
--
-- KEYS[1]  members  <prefix>:r:{<roomId>}:m   (hash sessionId -> '<version>|<userId>|<member JSON>')
-- KEYS[2]  users    <prefix>:r:{<roomId>}:u   (hash userId -> sessions in the room)
-- KEYS[3]  seq      <prefix>:r:{<roomId>}:seq
-- KEYS[4]  gone     <prefix>:r:{<roomId>}:g   (hash sessionId -> version it left at)
-- ARGV[1]  sessionId   ARGV[2] userId   ARGV[3] version   ARGV[4] kind (join|update|status)
-- ARGV[5]  event JSON with a %SEQ% placeholder   ARGV[6] channel
-- ARGV[7]  '1' when observers see a change (else the member is updated quietly)
-- ARGV[8]  the member as the room keeps it (JSON: h, st, hb, la, su, s?)
--
-- Reply: the room's seq after the call (0 when nothing was applied).
--
-- Every key of a room shares the hash tag {<roomId>} with its channel, so this
-- runs on one slot. The session's hash (another slot) is the truth; this is a
-- projection of it, and `version` orders the projections of one session: an
-- older one arriving late (a slow write of a connection that has since lost
-- the session) is ignored, and so is one older than the session's last leave.
-- Only a join may add a member, so a late update cannot resurrect one.
-- The room keeps each member's projection, so that its view is read in one
-- call (room_read.lua) without touching the sessions' slots.
local members, users, seqkey, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sid, uid, version, kind, ev, channel, visible = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7] == '1'
local member = ARGV[8]

local cur = redis.call('HGET', members, sid)
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v >= version then return 0 end
else
  if kind ~= 'join' then return 0 end
  local left = redis.call('HGET', gone, sid)
  if left and tonumber(left) >= version then return 0 end
  redis.call('HINCRBY', users, uid, 1)
  redis.call('HDEL', gone, sid)
  visible = true
end
redis.call('HSET', members, sid, version .. '|' .. uid .. '|' .. member)
if not visible then return 0 end
local seq = redis.call('INCR', seqkey)
redis.call('PUBLISH', channel, (string.gsub(ev, '%%SEQ%%', seq)))
return seq
