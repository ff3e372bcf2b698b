-- state.lua: presence:state, the session side, as a compare-and-set. The
-- caller reads the session, merges the patch in Rust (so JSON is never
-- decoded and re-encoded by Lua) and writes the result here; if the session
-- changed in between (`v` moved), the caller reads and merges again.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch   ARGV[4] roomId
-- ARGV[5]  the version the merge was based on   ARGV[6] merged state JSON ('' = none)
--
-- Reply: { ok, changed, v, uid, put: {room, ev, m, visible, x} } or { err = 'no_session' | 'stale_epoch' | 'not_joined' | 'retry' }.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local room, based_on, state = ARGV[4], ARGV[5], ARGV[6]

local f = load_session(key)
local err = fence(f, ARGV[3])
if err then return err end
local field = 'r:' .. room
if f[field] == nil then return cjson.encode({ err = 'not_joined' }) end
if tostring(f.v) ~= based_on then return cjson.encode({ err = 'retry' }) end
if f[field] == state then
  return cjson.encode({ ok = true, changed = false, v = tonumber(f.v), uid = f.userId })
end
f[field] = state
f.v = tonumber(f.v) + 1
redis.call('HSET', key, field, state, 'su:' .. room, now, 'v', f.v)
return cjson.encode({ ok = true, changed = true, v = f.v, uid = f.userId, put = room_put(f, room, 'update', now, true, T) })
