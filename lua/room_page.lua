-- room_page.lua: one page of a room's members, in page order (user id, then
-- session id), with every member of the page's users.
--
-- KEYS[1]  members  <prefix>:r:{<roomId>}:m   KEYS[2] seq   KEYS[3] order <prefix>:r:{<roomId>}:o
-- ARGV[1]  the page starts after this '<userId> <sessionId>' ('' = from the start)
-- ARGV[2]  the page's size
--
-- Reply: [seq, sessionId1, '<version>|<userId>|<member JSON>', sessionId2, ...]:
-- the first size + 1 members after ARGV[1] (one more, so that the caller
-- knows whether a next page exists) and the other members of their users
-- (a user's entry is derived from all their sessions). O(size) in the room.
--
-- The order index is kept by room_put.lua and room_del.lua. A room written
-- before it existed has none (or a short one): it is built here once, from
-- the members hash.
local members, seqkey, order = KEYS[1], KEYS[2], KEYS[3]
local after, size = ARGV[1], tonumber(ARGV[2])

if redis.call('ZCARD', order) ~= redis.call('HLEN', members) then
  redis.call('DEL', order)
  local all = redis.call('HGETALL', members)
  for i = 1, #all, 2 do
    local uid = string.match(all[i + 1], '^%d+|([^|]*)|')
    if uid then redis.call('ZADD', order, 0, uid .. ' ' .. all[i]) end
  end
end

local min = after == '' and '-' or ('(' .. after)
local out = { tonumber(redis.call('GET', seqkey) or '0') }
local seen = {}
for _, k in ipairs(redis.call('ZRANGE', order, min, '+', 'BYLEX', 'LIMIT', 0, size + 1)) do
  local uid = string.match(k, '^(.-) ')
  if not seen[uid] then
    seen[uid] = true
    -- '!' is the character after ' ': this range holds exactly uid's members.
    for _, own in ipairs(redis.call('ZRANGE', order, '[' .. uid .. ' ', '(' .. uid .. '!', 'BYLEX')) do
      local sid = string.sub(own, #uid + 2)
      local m = redis.call('HGET', members, sid)
      if m then
        out[#out + 1] = sid
        out[#out + 1] = m
      end
    end
  end
end
return out
