-- room_del.lua: sessions left a room (leave) or were culled (expire): one
-- member on the live paths, many at once when the reaper culls a dead
-- node's sessions.
--
-- KEYS: as room_put.lua.
-- ARGV[1]  channel   ARGV[2] 'SPUBLISH' (sharded Pub/Sub, Redis 7+) or 'PUBLISH'
-- then 3 per member, from ARGV[3]: sessionId, version, event JSON with %SEQ%
--
-- The sweeper also removes, through this script, a member whose session no
-- longer holds it (see room_due.lua): it passes the version it saw plus one.
--
-- Reply: a seq per member, the room's seq after its removal, or 0 when
-- nothing was removed. A removal older than the member's projection (the
-- session left and joined again since) is ignored. The version it left at
-- is kept in `gone`, so that a join projection still in flight cannot bring
-- the member back; `gone` is bounded (emptied when it holds over 1,000
-- entries before a call) and expires with the room's quiet.
local members, users, seqkey, gone, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel = ARGV[1]
local publish = ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

if redis.call('HLEN', gone) > 1000 then redis.call('DEL', gone) end

local function del(sid, version, ev)
  local cur = redis.call('HGET', members, sid)
  local left = tonumber(redis.call('HGET', gone, sid) or '0')
  if version > left then redis.call('HSET', gone, sid, version) end
  if not cur then return 0 end
  local v, uid = string.match(cur, '^(%d+)|([^|]*)')
  if tonumber(v) >= version then return 0 end
  redis.call('HDEL', members, sid)
  redis.call('ZREM', expiry, sid)
  redis.call('ZREM', KEYS[6], uid .. ' ' .. sid)
  if redis.call('HINCRBY', users, uid, -1) <= 0 then redis.call('HDEL', users, uid) end
  local seq = redis.call('INCR', seqkey)
  redis.call(publish, channel, (string.gsub(ev, '%%SEQ%%', seq)))
  return seq
end

local reply, removed = {}, false
for i = 3, #ARGV, 3 do
  local seq = del(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2])
  reply[#reply + 1] = seq
  removed = removed or seq > 0
end
redis.call('PEXPIRE', gone, 600000)
if removed and redis.call('HLEN', members) == 0 then
  -- An empty room is forgotten; its seq starts again from 1.
  redis.call('DEL', seqkey, users, expiry, KEYS[6])
end
return reply
