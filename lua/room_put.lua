-- room_put.lua: a room learns that a session joined it or changed.
--
-- KEYS[1]  members  <prefix>:r:{<roomId>}:m   (hash sessionId -> '<version>|<userId>|<member JSON>')
-- KEYS[2]  users    <prefix>:r:{<roomId>}:u   (hash userId -> sessions in the room)
-- KEYS[3]  seq      <prefix>:r:{<roomId>}:seq
-- KEYS[4]  gone     <prefix>:r:{<roomId>}:g   (hash sessionId -> version it left at)
-- KEYS[5]  expiry   <prefix>:r:{<roomId>}:x   (sorted set sessionId -> when to check its session)
-- KEYS[6]  order    <prefix>:r:{<roomId>}:o   (sorted set '<userId> <sessionId>', page order)
-- ARGV[1]  sessionId   ARGV[2] userId   ARGV[3] version   ARGV[4] kind (join|update|status)
-- ARGV[5]  event JSON with a %SEQ% placeholder   ARGV[6] channel
-- ARGV[7]  '1' when observers see a change (else the member is updated quietly)
-- ARGV[8]  the member as the room keeps it (JSON: h, st, hb, la, su, e, n, s?)
-- ARGV[9]  when the room's expiry index should check the member's session
-- ARGV[10] 'SPUBLISH' (sharded Pub/Sub, Redis 7+) or 'PUBLISH'
--
-- Reply: [seq, list, fresh]: the room's seq after the call (0 when nothing was
-- applied or nothing visible changed); `list` > 0 when the room's entry in
-- the rooms-by-deadline index must be lowered to it (the caller runs
-- ZADD LT), and `fresh` = 1 when the expiry index was empty before: the
-- room may be on its way out of that index, so the caller sets the entry
-- outright (plain ZADD) and the sweeper's conditional removal misses it.
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
local member, expiry, check = ARGV[8], KEYS[5], tonumber(ARGV[9])
local publish = ARGV[10] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

local cur = redis.call('HGET', members, sid)
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v >= version then return { 0, 0, 0 } end
else
  if kind ~= 'join' then return { 0, 0, 0 } end
  local left = redis.call('HGET', gone, sid)
  if left and tonumber(left) >= version then return { 0, 0, 0 } end
  redis.call('HINCRBY', users, uid, 1)
  redis.call('ZADD', KEYS[6], 0, uid .. ' ' .. sid)
  redis.call('HDEL', gone, sid)
  visible = true
end
redis.call('HSET', members, sid, version .. '|' .. uid .. '|' .. member)
local first = redis.call('ZRANGE', expiry, 0, 0, 'WITHSCORES')
redis.call('ZADD', expiry, check, sid)
local list, fresh = 0, 0
if #first == 0 then
  list, fresh = check, 1
elseif check < tonumber(first[2]) then
  list = check
end
if not visible then return { 0, list, fresh } end
local seq = redis.call('INCR', seqkey)
redis.call(publish, channel, (string.gsub(ev, '%%SEQ%%', seq)))
return { seq, list, fresh }
