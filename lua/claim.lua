-- claim.lua: presence:hello. Creates a session, or resumes it for a new
-- connection with epoch + 1.
--
-- KEYS[1]  session hash   <prefix>:s:{<sessionId>}
-- ARGV[1]  now (ms)        ARGV[2] timings JSON     ARGV[3] sessionId
-- ARGV[4]  userId          ARGV[5] handle ('' = keep/none)
-- ARGV[6]  meta JSON ('' = keep/none)               ARGV[7] activity
-- ARGV[8]  nodeId          ARGV[9] first epoch of a new session (now in ms)
-- ARGV[10] readiness ('' = keep/available)
-- ARGV[11] capabilities: '=' then the names joined with ',' ('' = keep/none)
--
-- Reply (JSON): { ok, e, v, resumed, uid, st, changed, ix, puts: [{room, ev, m, visible, x}],
--   buried?: { uid, v, dels: [{room, ev}] }, superseded?: { node, epoch } }, or { err = 'forbidden' },
--   or { err = 'kicked' } for the id of a session the moderation API ended (while its tombstone lives).
--
-- Epochs are issued here only. A session past its removal deadline that the
-- sweeper has not reached yet is gone: it is buried (its rooms are reported
-- in `buried` so the caller removes it there) and a new one starts. A
-- tombstone keeps the last epoch, version and user of a removed session, so
-- a reused id starts above them, no old connection can write to the new one,
-- and no other user can take the id over while the tombstone lives.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local sid, uid, handle, meta, activity, node = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local first_epoch = tonumber(ARGV[9])
local readiness, caps = ARGV[10] or '', ARGV[11] or ''
if caps ~= '' then caps = string.sub(caps, 2) else caps = nil end

local f = load_session(key)
local reply = { ok = true, puts = {} }

-- A session id stays its user's, alive or ended (its tombstone keeps the
-- user): no one else may claim it, and nothing is written for them.
if f ~= nil and f.userId ~= nil and f.userId ~= uid then return cjson.encode({ err = 'forbidden' }) end
-- Ended by the server (leave.lua, moderated): not to be taken up again.
if f ~= nil and f.dead == '1' and f.k == '1' then return cjson.encode({ err = 'kicked' }) end

if f ~= nil and f.dead ~= '1' and liveness(f, now, T) == 'expired' then
  local dels = room_dels(f, 'expire', now)
  f.v = tonumber(f.v) + 1
  reply.buried = { uid = f.userId, v = f.v, dels = dels }
  bury(key, f, T)
  f = load_session(key)
end

if f ~= nil and f.dead ~= '1' then
  -- The connection that held it, unless it had disconnected: its node must
  -- unbind it now (it would otherwise go on receiving until its next write).
  if f.d == nil or f.d == '' then
    reply.superseded = { node = f.n, epoch = tonumber(f.epoch) }
  end
  f.epoch = tonumber(f.epoch) + 1
  f.v = tonumber(f.v) + 1
  f.n = node
  f.d = nil
  redis.call('HDEL', key, 'd')
  if handle ~= '' then f.h = handle end
  if meta ~= '' then f.m = meta end
  -- A new readiness or capabilities are a change observers see.
  local redeclared = false
  if readiness ~= '' and readiness ~= (f.rd or 'available') then f.rd = readiness; redeclared = true end
  if caps ~= nil and caps ~= (f.cp or '') then f.cp = caps; redeclared = true end
  f.lastHeartbeatAt = math.max(now, num(f.lastHeartbeatAt, 0))
  f.a = activity
  if activity == 'active' then f.la = math.max(now, num(f.la, 0)) end
  local st, changed = rederive(f, now, T)
  redis.call('HSET', key, 'epoch', f.epoch, 'v', f.v, 'n', f.n, 'h', f.h or '', 'm', f.m or '',
    'lastHeartbeatAt', f.lastHeartbeatAt, 'a', f.a, 'la', f.la, 'st', st, 'g', f.epoch .. ':' .. st)
  if redeclared then redis.call('HSET', key, 'rd', f.rd or '', 'cp', f.cp or '') end
  keep(key, f, now, T)
  reply.resumed = true
  reply.changed = changed
  -- Every room hears of the new epoch; observers see a change only if the
  -- status (or the readiness) changed.
  reply.puts = status_puts(f, changed or redeclared, now, T)
else
  local floor_e, floor_v = 0, 0
  if f ~= nil then
    floor_e, floor_v = tonumber(f.epoch), tonumber(f.v)
  end
  f = {
    sid = sid, userId = uid, h = handle, m = meta, n = node, a = activity, rd = readiness, cp = caps or '',
    epoch = math.max(first_epoch, floor_e + 1), v = floor_v + 1,
    lastHeartbeatAt = now, la = now, c = now, st = 'active',
  }
  redis.call('DEL', key)
  f.la = now
  local st = rederive(f, now, T)
  redis.call('HSET', key, 'sid', sid, 'userId', uid, 'h', handle, 'm', meta, 'n', node, 'a', activity,
    'epoch', f.epoch, 'v', f.v, 'lastHeartbeatAt', now, 'la', now, 'c', now, 'st', st,
    'g', f.epoch .. ':' .. st)
  -- Only what was declared: most sessions never do, and keep no empty fields.
  if f.rd ~= '' then redis.call('HSET', key, 'rd', f.rd) end
  if f.cp ~= '' then redis.call('HSET', key, 'cp', f.cp) end
  keep(key, f, now, T)
  reply.resumed = false
  reply.changed = false
end

reply.e = tonumber(f.epoch)
reply.v = tonumber(f.v)
reply.uid = f.userId
reply.st = f.st
reply.la = tonumber(f.la) or now
reply.ix = index_update(key, f, now, T)
return cjson.encode(reply)
