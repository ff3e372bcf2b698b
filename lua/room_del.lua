-- room_del.lua: a session left a room (leave) or was culled (expire).
--
-- KEYS: as room_put.lua.
-- ARGV[1]  sessionId   ARGV[2] version   ARGV[3] event JSON with %SEQ%   ARGV[4] channel
-- ARGV[5]  'SPUBLISH' (sharded Pub/Sub, Redis 7+) or 'PUBLISH'
--
-- The sweeper also removes, through this script, a member whose session no
-- longer holds it (see room_due.lua): it passes the version it saw plus one.
--
-- Reply: the room's seq after the removal, or 0 when nothing was removed.
-- A removal older than the member's projection (the session left and joined
-- again since) is ignored. The version it left at is kept in `gone`, so that
-- a join projection still in flight cannot bring the member back; `gone` is
-- bounded and expires with the room's quiet.
local members, users, seqkey, gone, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid, version, ev, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local publish = ARGV[5] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

local cur = redis.call('HGET', members, sid)
if redis.call('HLEN', gone) > 1000 then redis.call('DEL', gone) end
local left = tonumber(redis.call('HGET', gone, sid) or '0')
if version > left then redis.call('HSET', gone, sid, version) end
redis.call('PEXPIRE', gone, 600000)
if not cur then return 0 end
local v, uid = string.match(cur, '^(%d+)|([^|]*)')
if tonumber(v) >= version then return 0 end
redis.call('HDEL', members, sid)
redis.call('ZREM', expiry, sid)
redis.call('ZREM', KEYS[6], uid .. ' ' .. sid)
if redis.call('HINCRBY', users, uid, -1) <= 0 then redis.call('HDEL', users, uid) end
local seq = redis.call('INCR', seqkey)
redis.call(publish, channel, (string.gsub(ev, '%%SEQ%%', seq)))
if redis.call('HLEN', members) == 0 then
  -- An empty room is forgotten; its seq starts again from 1.
  redis.call('DEL', seqkey, users, expiry, KEYS[6])
end
return seq
