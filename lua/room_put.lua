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
--   the event JSON left open for its seq (this closes it: `,"seq":<n>}`),
--   '1' when observers see a change (else the member is updated quietly),
--   the member as the room keeps it (JSON: h, st, hb, la, su, e, n, s?),
--   when the room's expiry index should check the member's session
--
-- Reply: [list, fresh, seq..., occupied, userId...]: a seq per member, the
-- room's seq after its event (0 when nothing was applied or nothing visible
-- changed); then the lifecycle this call decided: `occupied` = 1 when the
-- room had no member before, and the users whose first session in the room
-- this call added (member.joined). `list` > 0
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
-- call (room_read.lua) without touching the sessions' slots.
--
-- The members are read with one command per key and written the same way,
-- not a command per member: in a cull, calling Redis cost more than the
-- work each call does. The outcome is as if the members were put one after
-- the other in ARGV order; each member's event is published on its own, in
-- seq order, as a single put would.
local members, users, seqkey, gone, expiry, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local channel = ARGV[1]
local publish = ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

-- The expiry index's earliest entry before this call (nil: it was empty),
-- and the earliest check filed by it.
local first = redis.call('ZRANGE', expiry, 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2])
local lowest = nil

local n = (#ARGV - 2) / 8
if n < 1 then return { 0, 0, 0 } end
local sids = {}
for k = 1, n do sids[k] = ARGV[8 * k - 5] end
local read = redis.call('HMGET', members, unpack(sids))

-- Each member's entry as this call leaves it (false: none); `written` lists
-- the sessions whose entry and check time this call writes, once each.
local entry, check_of, written = {}, {}, {}
for k, sid in ipairs(sids) do
  if entry[sid] == nil then entry[sid] = read[k] end
end

local visible_puts, joined, joined_order, ungone = {}, {}, {}, {}
local reply = { 0, 0 }
for k = 1, n do
  local i = 8 * k - 5
  local sid, uid, version, kind = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local visible, check = ARGV[i + 5] == '1', tonumber(ARGV[i + 7])
  local cur = entry[sid]
  local apply = true
  reply[k + 2] = 0
  if cur then
    if tonumber(string.match(cur, '^(%d+)|')) >= version then apply = false end
  elseif kind ~= 'join' then
    apply = false
  else
    local left = redis.call('HGET', gone, sid)
    if left and tonumber(left) >= version then
      apply = false
    else
      joined[#joined + 1] = uid
      joined_order[#joined_order + 1] = uid .. ' ' .. sid
      ungone[#ungone + 1] = sid
      visible = true
    end
  end
  if apply then
    if check_of[sid] == nil then written[#written + 1] = sid end
    entry[sid] = version .. '|' .. uid .. '|' .. ARGV[i + 6]
    check_of[sid] = check
    if lowest == nil or check < lowest then lowest = check end
    if visible then visible_puts[#visible_puts + 1] = k end
  end
end

if #written > 0 then
  local fields, scores = {}, {}
  for _, sid in ipairs(written) do
    fields[#fields + 1] = sid
    fields[#fields + 1] = entry[sid]
    scores[#scores + 1] = check_of[sid]
    scores[#scores + 1] = sid
  end
  redis.call('HSET', members, unpack(fields))
  redis.call('ZADD', expiry, unpack(scores))
end
local occupied, first_in = 0, {}
if #joined > 0 then
  if redis.call('HLEN', users) == 0 then occupied = 1 end
  -- (A session joins at most once per call: after its join it is a member,
  -- and a later join of it in the same call is an update.)
  for _, uid in ipairs(joined) do
    if redis.call('HINCRBY', users, uid, 1) == 1 then first_in[#first_in + 1] = uid end
  end
  local pairs_ = {}
  for _, m in ipairs(joined_order) do
    pairs_[#pairs_ + 1] = 0
    pairs_[#pairs_ + 1] = m
  end
  redis.call('ZADD', order, unpack(pairs_))
  redis.call('HDEL', gone, unpack(ungone))
end
if #visible_puts > 0 then
  local last = redis.call('INCRBY', seqkey, #visible_puts)
  for j, k in ipairs(visible_puts) do
    local seq = last - #visible_puts + j
    reply[k + 2] = seq
    redis.call(publish, channel, ARGV[8 * k - 1] .. ',"seq":' .. seq .. '}')
  end
end
if lowest ~= nil then
  if earliest == nil then
    reply[1], reply[2] = lowest, 1
  elseif lowest < earliest then
    reply[1] = lowest
  end
end
reply[n + 3] = occupied
for _, uid in ipairs(first_in) do reply[#reply + 1] = uid end
return reply
