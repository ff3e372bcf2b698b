-- declare.lua: presence:readiness. Sets what a session declares about
-- taking calls (its readiness and capabilities); every room of the session
-- hears of a change (an `update` event).
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch
-- ARGV[4]  readiness ('' = keep)
-- ARGV[5]  capabilities: '=' then the names joined with ',' ('' = keep)
--
-- Reply: { ok, changed, v, uid, puts: [{room, ev, m, visible, x}] } or
--   { err = 'no_session' | 'stale_epoch' }.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local readiness, caps = ARGV[4], ARGV[5]

local f = load_session(key)
local err = fence(f, ARGV[3])
if err then return err end
local changed = false
if readiness ~= '' and readiness ~= (f.rd or 'available') then f.rd = readiness; changed = true end
if caps ~= '' then
  caps = string.sub(caps, 2)
  if caps ~= (f.cp or '') then f.cp = caps; changed = true end
end
if not changed then
  return cjson.encode({ ok = true, changed = false, v = tonumber(f.v), uid = f.userId, puts = {} })
end
f.v = tonumber(f.v) + 1
redis.call('HSET', key, 'rd', f.rd or '', 'cp', f.cp or '', 'v', f.v)
local puts = {}
for _, room in ipairs(session_rooms(f)) do
  puts[#puts + 1] = room_put(f, room, 'update', now, true, T)
end
return cjson.encode({ ok = true, changed = true, v = f.v, uid = f.userId, puts = puts })
