-- leave.lua: presence:leave. With a room: the session leaves that room. With
-- no room ('' in ARGV[4]): the session ends, leaving every room at once, and
-- only a tombstone is left. The caller then runs room_del.lua per room.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch   ARGV[4] roomId or ''
--
-- Reply: { ok, v, uid, ended, dels: [{room, ev}] } or { err = 'no_session' | 'stale_epoch' | 'not_joined' }.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local room = ARGV[4]

local f = load_session(key)
local err = fence(f, ARGV[3])
if err then return err end

if room ~= '' then
  if f['r:' .. room] == nil then return cjson.encode({ err = 'not_joined' }) end
  local ev = event_json(f, room, 'leave', 'offline', now)
  f.v = tonumber(f.v) + 1
  redis.call('HDEL', key, 'r:' .. room, 'su:' .. room)
  redis.call('HSET', key, 'v', f.v)
  return cjson.encode({ ok = true, v = f.v, uid = f.userId, ended = false, dels = { { room = room, ev = ev } } })
end

local dels = room_dels(f, 'leave', now)
f.v = tonumber(f.v) + 1
bury(key, f, T)
return cjson.encode({ ok = true, v = f.v, uid = f.userId, ended = true, dels = dels })
