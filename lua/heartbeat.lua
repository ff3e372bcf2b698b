-- heartbeat.lua: presence:heartbeat. The hot path: one round trip, O(1) in
-- the size of the session's rooms unless the status changes.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch   ARGV[4] activity ('' = not reported)
--
-- Reply: '{"ok":true}' when nothing observers see changed (the common case),
-- else { ok, changed, v, uid, ix, puts: [{room, ev, m, visible}] }; or an error.
-- Only a heartbeat that reports 'active' counts as activity; one that reports
-- nothing proves liveness only.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = cjson.decode(ARGV[2])
local activity = ARGV[4]

-- Only the facts that decide the status are read; the whole hash (rooms,
-- states) only when the status changed and every room must be told.
local f = load_fields(key, { 'dead', 'epoch', 'd', 'lastHeartbeatAt', 'a', 'la', 'st', 'v', 'ix', 'userId' })
local err = fence(f, ARGV[3])
if err then return err end

f.lastHeartbeatAt = math.max(now, num(f.lastHeartbeatAt, 0))
if activity ~= '' then f.a = activity end
if activity == 'active' then f.la = math.max(now, num(f.la, 0)) end
local st, changed = rederive(key, f, now, T)
if changed then f.v = tonumber(f.v) + 1 end
redis.call('HSET', key, 'lastHeartbeatAt', f.lastHeartbeatAt, 'a', f.a or 'active', 'la', f.la, 'st', st, 'v', f.v)
local ix = index_update(key, f, now, T)
if not changed and ix == nil then return '{"ok":true}' end
local puts = {}
if changed then puts = status_puts(load_session(key), true, now, T) end
return cjson.encode({ ok = true, changed = changed, v = tonumber(f.v), uid = f.userId, ix = ix, puts = puts })
