-- heartbeat.lua: presence:heartbeat. The hot path: one round trip, O(1) in
-- the size of the session's rooms unless the status changes.
--
-- KEYS[1]  session hash
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] epoch   ARGV[4] activity ('' = not reported)
--
-- Reply: { ok, st, a, hb, la } when nothing observers see changed (the
-- common case; ix too when the deadline index must be told), else { ok,
-- changed, v, uid, ix, puts: [{room, ev, m, visible}], st, a, hb, la }; or an
-- error. st, a, hb and la are the recorded status and the facts it derives
-- from, which the node needs to vouch for the session's next quiet beats;
-- ku the last heartbeat time that needs no new TTL (keep_until).
-- Only a heartbeat that reports 'active' counts as activity; one that reports
-- nothing proves liveness only.
--
-- The common case reads the few fields that decide the status and writes
-- only those that moved (the heartbeat time, and the activity when it is
-- reported): one HMGET and one HSET. The TTL is set again only when its
-- slack is used up (`keep`), the deadline index only when the next deadline
-- comes earlier (`index_update`); the whole hash (rooms, states) is read only
-- when the status changed and every room must be told.
local key = KEYS[1]
local now_text = ARGV[1]
local now = tonumber(now_text)
local T = timings(ARGV[2])
local epoch, activity = ARGV[3], ARGV[4]

local f = load_fields(key, { 'dead', 'epoch', 'd', 'lastHeartbeatAt', 'a', 'la', 'st', 'ix', 'ttl', 'g' })
local err = fence(f, epoch)
if err then return err end

-- Times are written as the text they came in (now_text): Lua turning a
-- number back into text is a good part of a quiet beat's cost.
local w = { 'HSET', key }
if now > num(f.lastHeartbeatAt, 0) then
  f.lastHeartbeatAt = now_text
  w[#w + 1] = 'lastHeartbeatAt'
  w[#w + 1] = now_text
end
if activity ~= '' and activity ~= f.a then
  f.a = activity
  w[#w + 1] = 'a'
  w[#w + 1] = activity
end
if activity == 'active' and now > num(f.la, 0) then
  f.la = now_text
  w[#w + 1] = 'la'
  w[#w + 1] = now_text
end
local st, changed = rederive(f, now, T)
if changed then
  w[#w + 1] = 'st'
  w[#w + 1] = st
end
-- The guard follows the status; a hash whose guard is missing or behind
-- (written before `g` existed, or by an older build's scripts during a
-- rolling upgrade) gets it right here.
local g = guard(f)
if g ~= f.g then
  w[#w + 1] = 'g'
  w[#w + 1] = g
end
if #w > 2 then redis.call(unpack(w)) end
local v
if changed then v = redis.call('HINCRBY', key, 'v', 1) end
keep(key, f, now, T)
local ix = index_update(key, f, now, T)
-- What the node needs to vouch for the session's next quiet beats (the
-- status recorded, the facts it derives from): see beats.lua.
local pulse = '"st":"' .. st .. '","a":"' .. (f.a or 'active') .. '","hb":' ..
  jint(f.lastHeartbeatAt) .. ',"la":' .. jint(f.la) .. ',"ku":' .. jint(keep_until(f, T))
if not changed then
  if ix == nil then return '{"ok":true,' .. pulse .. '}' end
  -- Only the deadline came earlier: the caller files it; no room hears of it.
  return '{"ok":true,"ix":' .. jint(ix) .. ',' .. pulse .. '}'
end
local all = load_session(key)
return cjson.encode({
  ok = true, changed = true, v = v, uid = all.userId, ix = ix, puts = status_puts(all, true, now, T),
  st = st, a = f.a or 'active', hb = tonumber(f.lastHeartbeatAt), la = num(f.la, 0),
  ku = keep_until(f, T),
})
