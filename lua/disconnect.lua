-- disconnect.lua: the connection closed without a leave. The session turns
-- stale and is kept for the reconnect grace window. Fenced like every write:
-- the disconnect of an old connection never touches a session a newer one owns.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch
--
-- Reply: { ok, changed, v, uid, ix, puts: [{room, ev, m, visible}] } or an error.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])

local f = load_session(key)
local err = fence(f, ARGV[3])
if err then return err end
f.d = now
local st, changed = rederive(f, now, T)
if changed then f.v = tonumber(f.v) + 1 end
redis.call('HSET', key, 'd', now, 'st', st, 'v', f.v, 'g', guard(f))
keep(key, f, now, T)
local ix = index_update(key, f, now, T)
local puts = {}
if changed then puts = status_puts(f, true, now, T) end
return cjson.encode({ ok = true, changed = changed, v = tonumber(f.v), uid = f.userId, ix = ix, puts = puts,
  st = st, la = num(f.la, 0) })
