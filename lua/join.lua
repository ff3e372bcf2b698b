-- join.lua: presence:join, the session side. The caller then runs
-- room_put.lua with the returned projection (session first: a failure between
-- the two leaves the room short of a member, which the next join or the
-- sweeper repairs, never a member the session does not know).
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch   ARGV[4] roomId
-- ARGV[5]  '1' when a state is given    ARGV[6] state JSON
-- ARGV[7]  max rooms per session
--
-- Reply: { ok, already, changed, v, uid, put: {room, ev, m, visible} } or { err = 'no_session' | 'stale_epoch' | 'too_many_rooms' }.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local room, has_state, state, max_rooms = ARGV[4], ARGV[5] == '1', ARGV[6], tonumber(ARGV[7])

local f = load_session(key)
local err = fence(f, ARGV[3])
if err then return err end

local field = 'r:' .. room
if f[field] ~= nil then
  if has_state and f[field] ~= state then
    f[field] = state
    f.v = tonumber(f.v) + 1
    redis.call('HSET', key, field, state, 'su:' .. room, now, 'v', f.v)
    return cjson.encode({ ok = true, already = true, changed = true, v = f.v, uid = f.userId,
      put = room_put(f, room, 'update', now, true, T) })
  end
  return cjson.encode({ ok = true, already = true, changed = false, v = tonumber(f.v), uid = f.userId,
    put = room_put(f, room, 'join', now, false, T) })
end

if #session_rooms(f) >= max_rooms then
  return cjson.encode({ err = 'too_many_rooms', limit = max_rooms })
end
if not has_state then state = '' end
f[field] = state
f.v = tonumber(f.v) + 1
redis.call('HSET', key, field, state, 'su:' .. room, now, 'v', f.v)
return cjson.encode({ ok = true, already = false, changed = true, v = f.v, uid = f.userId,
  put = room_put(f, room, 'join', now, true, T) })
