-- leave.lua: presence:leave. With a room: the session leaves that room. With
-- no room ('' in ARGV[4]): the session ends, leaving every room at once, and
-- only a tombstone is left. The caller then runs room_del.lua per room.
--
-- The moderation API removes with no epoch ('' in ARGV[3]): any live
-- session, connected or not; a session it ends is marked `k` on its
-- tombstone, and claim.lua refuses the id ('kicked') while that lives.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch ('' : the moderation API)
-- ARGV[4]  roomId or ''
--
-- Reply: { ok, v, uid, ended, dels: [{room, ev}], la?, e, n } or
-- { err = 'no_session' | 'stale_epoch' | 'not_joined' }.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local room = ARGV[4]

local f = load_session(key)
local moderated = ARGV[3] == ''
local err
if moderated then
  if f == nil or f.dead == '1' or liveness(f, now, T) == 'expired' then
    return cjson.encode({ err = 'no_session' })
  end
else
  err = fence(f, ARGV[3])
end
if err then return err end

if room ~= '' then
  if f['r:' .. room] == nil then return cjson.encode({ err = 'not_joined' }) end
  local ev = event_json(f, room, 'leave', 'offline', now)
  f.v = tonumber(f.v) + 1
  redis.call('HDEL', key, 'r:' .. room, 'su:' .. room)
  redis.call('HSET', key, 'v', f.v)
  return cjson.encode({ ok = true, v = f.v, uid = f.userId, ended = false, dels = { { room = room, ev = ev } },
    e = tonumber(f.epoch), n = f.n })
end

local dels = room_dels(f, 'leave', now)
f.v = tonumber(f.v) + 1
bury(key, f, T)
if moderated then redis.call('HSET', key, 'k', '1') end
return cjson.encode({ ok = true, v = f.v, uid = f.userId, ended = true, dels = dels, la = num(f.la, 0),
  e = tonumber(f.epoch), n = f.n })
