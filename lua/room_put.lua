-- room_put.lua: a room learns that sessions joined it or changed (one
-- member on the live paths; many at once when the reaper marks a dead
-- node's sessions stale).
--
-- KEYS[1]  members  <prefix>:r:{<roomId>}:m   (hash sessionId -> '<version>|<userId>|<member JSON>')
-- KEYS[2]  users    <prefix>:r:{<roomId>}:u   (hash userId -> sessions in the room)
-- KEYS[3]  seq      <prefix>:r:{<roomId>}:seq
-- KEYS[4]  gone     <prefix>:r:{<roomId>}:g   (hash sessionId -> version it left at)
-- KEYS[5]  expiry   <prefix>:r:{<roomId>}:x   (sorted set sessionId -> when to check its session)
-- KEYS[6]  order    <prefix>:r:{<roomId>}:o   (sorted set '<userId> <sessionId>', page order)
-- ARGV[1]  channel   ARGV[2] 'SPUBLISH' (sharded Pub/Sub, Redis 7+) or 'PUBLISH'
-- then 8 per member, from ARGV[3]:
--   sessionId, userId, version, kind (join|update|status),
--   event JSON with a %SEQ% placeholder,
--   '1' when observers see a change (else the member is updated quietly),
--   the member as the room keeps it (JSON: h, st, hb, la, su, e, n, s?),
--   when the room's expiry index should check the member's session
--
-- Reply: [list, fresh, seq...]: a seq per member, the room's seq after its
-- event (0 when nothing was applied or nothing visible changed); `list` > 0
-- when the room's entry in the rooms-by-deadline index must be lowered to it
-- (the caller runs ZADD LT), and `fresh` = 1 when the expiry index was empty
-- before: the room may be on its way out of that index, so the caller sets
-- the entry outright (plain ZADD) and the sweeper's conditional removal
-- misses it.
--
-- Every key of a room shares the hash tag {<roomId>} with its channel, so this
-- runs on one slot. The session's hash (another slot) is the truth; this is a
-- projection of it, and `version` orders the projections of one session: an
-- older one arriving late (a slow write of a connection that has since lost
-- the session) is ignored, and so is one older than the session's last leave.
-- Only a join may add a member, so a late update cannot resurrect one.
-- The room keeps each member's projection, so that its view is read in one
-- call (room_read.lua) without touching the sessions' slots. Each member's
-- event is published on its own, in order, as a single put would.
local members, users, seqkey, gone, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel = ARGV[1]
local publish = ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

-- The expiry index's earliest entry before this call (nil: it was empty),
-- and the earliest check filed by it.
local first = redis.call('ZRANGE', expiry, 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2])
local lowest = nil

local function put(sid, uid, version, kind, ev, visible, member, check)
  local cur = redis.call('HGET', members, sid)
  if cur then
    local v = tonumber(string.match(cur, '^(%d+)|'))
    if v >= version then return 0 end
  else
    if kind ~= 'join' then return 0 end
    local left = redis.call('HGET', gone, sid)
    if left and tonumber(left) >= version then return 0 end
    redis.call('HINCRBY', users, uid, 1)
    redis.call('ZADD', KEYS[6], 0, uid .. ' ' .. sid)
    redis.call('HDEL', gone, sid)
    visible = true
  end
  redis.call('HSET', members, sid, version .. '|' .. uid .. '|' .. member)
  redis.call('ZADD', expiry, check, sid)
  if lowest == nil or check < lowest then lowest = check end
  if not visible then return 0 end
  local seq = redis.call('INCR', seqkey)
  redis.call(publish, channel, (string.gsub(ev, '%%SEQ%%', seq)))
  return seq
end

local reply = { 0, 0 }
for i = 3, #ARGV, 8 do
  reply[#reply + 1] = put(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5] == '1', ARGV[i + 6], tonumber(ARGV[i + 7]))
end
if lowest ~= nil then
  if earliest == nil then
    reply[1], reply[2] = lowest, 1
  elseif lowest < earliest then
    reply[1] = lowest
  end
end
return reply
