-- expire.lua: the sweeper's step for the sessions it found due in the
-- deadline index, many at once (the reaper culls a dead node's sessions in
-- batches, not one call each). For each session: re-derives the status at
-- `now` (a heartbeat may have moved the deadline since the entry was made),
-- reports a status change, buries the session once it is past its removal
-- deadline, and says when to look again.
--
-- Also the sweeper's step for a member found due in a room's expiry index
-- (room_due.lua): then there is one session and ARGV[3] names the room, and
-- its outcome says whether the session still holds it (`inroom`) and when
-- the room should check again (`x`).
--
-- KEYS[1..n]  session hashes (one slot on Redis Cluster; any on one server)
-- ARGV[1]  now   ARGV[2] timings JSON   ARGV[3] roomId (optional)
-- ARGV[4]  the sweeper's lease term
--
-- Term fencing: a session keeps the highest term that swept it (`ft`); a
-- sweeper with a lower term (a leader paused past its lease, whose
-- successor has been here) changes nothing: { outcome = 'fenced' }, and it
-- changes nothing more in this call either (the reply ends there; the later
-- sessions of the batch are left untouched): it is no longer the leader.
--
-- Reply: a JSON array, an outcome per key in KEYS order (up to the first
-- 'fenced'), by `outcome`:
--   { outcome = 'gone' }     no session (or only its tombstone): nothing left to watch
--   { outcome = 'fenced' }   a sweeper with a higher term has been here
--   { outcome = 'expired', v, uid, dels: [{room, ev}] }   buried now
--   { outcome = 'alive', changed, v, uid, next, inroom, x, puts: [{room, ev, m, visible, x}] }
local now = tonumber(ARGV[1])
local T = timings(ARGV[2])
local room = ARGV[3]
local term = tonumber(ARGV[4]) or 0
local fenced = { outcome = 'fenced' }

local function expire_one(key)
  local f, rooms = load_session(key)
  if f == nil or f.dead == '1' then return { outcome = 'gone' } end
  if term < num(f.ft, 0) then return fenced end

  -- A buried session keeps no term (its tombstone answers 'gone'); a live
  -- one takes this term with the rest of what this call writes.
  if liveness(f, now, T) == 'expired' then
    local dels = room_dels(f, 'expire', now, rooms)
    f.v = tonumber(f.v) + 1
    bury(key, f, T)
    return { outcome = 'expired', v = f.v, uid = f.userId, dels = dels, la = num(f.la, 0) }
  end

  local st, changed = rederive(f, now, T)
  if changed then f.v = tonumber(f.v) + 1 end
  local nd = next_deadline(f, now, T)
  redis.call('HSET', key, 'st', st, 'v', f.v, 'ix', nd, 'g', guard(f), 'ft', term)
  keep(key, f, now, T)
  local puts = {}
  if changed then puts = status_puts(f, true, now, T, rooms) end
  local inroom = room ~= nil and room ~= '' and f['r:' .. room] ~= nil
  return {
    outcome = 'alive', changed = changed, v = tonumber(f.v), uid = f.userId, next = nd, puts = puts,
    st = st, la = num(f.la, 0), inroom = inroom, x = removal_deadline(f, T) + KEEP,
  }
end

local out = {}
for i, key in ipairs(KEYS) do
  local r = expire_one(key)
  out[i] = r
  if r == fenced then break end
end
return cjson.encode(out)
