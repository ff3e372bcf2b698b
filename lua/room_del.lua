-- room_del.lua: sessions left a room (leave) or were culled (expire): one
-- member on the live paths, many at once when the reaper culls a dead
-- node's sessions.
--
-- KEYS: as room_put.lua.
-- ARGV[1]  channel   ARGV[2] 'SPUBLISH' (sharded Pub/Sub, Redis 7+) or 'PUBLISH'
-- then 3 per member, from ARGV[3]: sessionId, version, and the event JSON
-- left open for its seq (this closes it: `,"seq":<n>}`)
--
-- The sweeper also removes, through this script, a member whose session no
-- longer holds it (see room_due.lua): it passes the version it saw plus one.
--
-- Reply: [seq..., vacated, userId...]: a seq per member, the room's seq
-- after its removal, or 0 when nothing was removed; then the lifecycle this
-- call decided: `vacated` = 1 when it removed the room's last member, and
-- the users whose last session in the room it removed (member.left). A removal older than the member's projection (the
-- session left and joined again since) is ignored. The version it left at
-- is kept in `gone`, so that a join projection still in flight cannot bring
-- the member back; `gone` is bounded (emptied when it holds over 1,000
-- entries before a call) and expires with the room's quiet.
--
-- The members are read with one command per key and written the same way,
-- not a command per member: in a cull, calling Redis cost more than the
-- work each call does. The outcome is as if the members were removed one
-- after the other in ARGV order (a session named twice is removed once);
-- each removal's event is published on its own, in seq order.
local members, users, seqkey, gone, expiry, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local channel = ARGV[1]
local publish = ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

if redis.call('HLEN', gone) > 1000 then redis.call('DEL', gone) end

local n = (#ARGV - 2) / 3
if n < 1 then return { 0 } end
local sids = {}
for k = 1, n do sids[k] = ARGV[3 * k] end
local read = redis.call('HMGET', members, unpack(sids))

-- Each member's entry as this call leaves it (false: none), and the version
-- each session left at, as far as this call has needed to know it.
local entry, left, left_changed = {}, {}, {}
for k, sid in ipairs(sids) do
  if entry[sid] == nil then entry[sid] = read[k] end
end

local reply, removed, last_out = {}, {}, {}
local out_sids, out_order, delta, uids = {}, {}, {}, {}
for k = 1, n do
  local sid, version = sids[k], tonumber(ARGV[3 * k + 1])
  local cur = entry[sid]
  reply[k] = 0
  if not cur then
    local l = left[sid]
    if l == nil then l = tonumber(redis.call('HGET', gone, sid) or '0') end
    if version > l then
      l = version
      left_changed[sid] = true
    end
    left[sid] = l
  else
    local v, uid = string.match(cur, '^(%d+)|([^|]*)')
    if tonumber(v) < version then
      -- A member has no older entry in `gone` to compare with: the join
      -- that made it one took its entry out.
      entry[sid] = false
      left[sid], left_changed[sid] = version, true
      removed[#removed + 1] = k
      out_sids[#out_sids + 1] = sid
      out_order[#out_order + 1] = uid .. ' ' .. sid
      if delta[uid] == nil then
        uids[#uids + 1] = uid
        delta[uid] = 0
      end
      delta[uid] = delta[uid] - 1
    end
  end
end

local gone_pairs = {}
for sid, _ in pairs(left_changed) do
  gone_pairs[#gone_pairs + 1] = sid
  gone_pairs[#gone_pairs + 1] = left[sid]
end
if #gone_pairs > 0 then redis.call('HSET', gone, unpack(gone_pairs)) end

if #removed > 0 then
  redis.call('HDEL', members, unpack(out_sids))
  redis.call('ZREM', expiry, unpack(out_sids))
  redis.call('ZREM', order, unpack(out_order))
  -- Sessions per user in the room: a user with none left is taken out.
  local counts = redis.call('HMGET', users, unpack(uids))
  local keep, drop = {}, {}
  for i, uid in ipairs(uids) do
    local c = tonumber(counts[i] or '0') + delta[uid]
    if c > 0 then
      keep[#keep + 1] = uid
      keep[#keep + 1] = c
    else
      drop[#drop + 1] = uid
      last_out[#last_out + 1] = uid
    end
  end
  if #keep > 0 then redis.call('HSET', users, unpack(keep)) end
  if #drop > 0 then redis.call('HDEL', users, unpack(drop)) end
  local last = redis.call('INCRBY', seqkey, #removed)
  for i, k in ipairs(removed) do
    local seq = last - #removed + i
    reply[k] = seq
    redis.call(publish, channel, ARGV[3 * k + 2] .. ',"seq":' .. seq .. '}')
  end
end
redis.call('PEXPIRE', gone, 600000)
reply[n + 1] = 0
if #removed > 0 and redis.call('HLEN', members) == 0 then
  -- An empty room is forgotten; its seq starts again from 1.
  redis.call('DEL', seqkey, users, expiry, order)
  reply[n + 1] = 1
end
for _, uid in ipairs(last_out) do reply[#reply + 1] = uid end
return reply
