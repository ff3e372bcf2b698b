-- prelude.lua: shared helpers, prepended to every script at build time.
--
-- Mirrors presence-core's lifecycle (session.rs): a session's status is
-- derived from its facts and the time; these functions must agree with the
-- Rust ones, which the conformance suite checks through both stores.
--
-- Timings arrive as one ARGV entry, a JSON object
-- { hbt, idle, away, bgt, grace, tomb } (all ms), built by the Rust side
-- (`timings_json` in crates/presence-store/src/redis/session_scripts.rs);
-- `tomb` is how long a tombstone lives, the same as the memory store's.
-- Replies are JSON strings, each read by one Rust type.
--
-- Loaded as a function library (Redis 7+), this file runs once and its
-- locals live between calls; run with EVALSHA (Redis 6), it runs before
-- every call. Nothing here may depend on which.

-- The timings as a table: decoded once per distinct text. In a function
-- library the last text and its table are kept between calls (the text is
-- the same on every call of a node), which spares the heartbeat a JSON
-- decode; the table is never written to.
local timings_text, timings_table
local function timings(text)
  if text ~= timings_text then
    timings_table = cjson.decode(text)
    timings_text = text
  end
  return timings_table
end

local function num(v, default)
  if v == nil or v == false or v == '' then return default end
  return tonumber(v)
end

-- Adds to `rooms` the room a session's field names, if it names one:
-- fields 'r:<roomId>' hold the session's state in the room ('' for none).
-- The prefix is tested by its bytes (114 = 'r', 58 = ':'): taking a
-- substring of every field name cost a cull more than the test.
local function add_room(rooms, field)
  local a, b = string.byte(field, 1, 2)
  if a == 114 and b == 58 then rooms[#rooms + 1] = string.sub(field, 3) end
end

-- Reads a session hash into a table (nil when absent), and its rooms as
-- session_rooms below would list them (a second pass over the fields cost
-- a cull as much as this one).
local function load_session(key)
  local raw = redis.call('HGETALL', key)
  if #raw == 0 then return nil end
  local f, rooms = {}, {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
    add_room(rooms, raw[i])
  end
  table.sort(rooms)
  return f, rooms
end

-- Reads only the fields `names` of a session hash (nil when absent): the hot
-- path's cheaper load_session (a session hash holds a field per room).
local function load_fields(key, names)
  local raw = redis.call('HMGET', key, unpack(names))
  local f, any = {}, false
  for i, n in ipairs(names) do
    if raw[i] then
      f[n] = raw[i]
      any = true
    end
  end
  if not any then return nil end
  return f
end

local function hb_timeout(f, T)
  if f.a == 'background' then return T.bgt end
  return T.hbt
end

local function removal_deadline(f, T)
  local silent = num(f.lastHeartbeatAt, 0) + hb_timeout(f, T) + T.grace
  local d = num(f.d, nil)
  if d ~= nil then
    local g = d + T.grace
    if g < silent then return g end
  end
  return silent
end

-- 'active' | 'idle' | 'away' | 'stale' | 'expired'
local function liveness(f, now, T)
  if now >= removal_deadline(f, T) then return 'expired' end
  local hb = num(f.lastHeartbeatAt, 0)
  if num(f.d, nil) ~= nil or now >= hb + hb_timeout(f, T) then return 'stale' end
  if f.a == 'background' then return 'away' end
  local inactive = now - num(f.la, 0)
  if inactive >= T.away then return 'away' end
  if f.a == 'idle' or inactive >= T.idle then return 'idle' end
  return 'active'
end

-- The next instant the status may change.
local function next_deadline(f, now, T)
  local removal = removal_deadline(f, T)
  if now >= removal then return now end
  local la = num(f.la, 0)
  local best = removal
  local c = la + T.idle
  if c > now and c < best then best = c end
  c = la + T.away
  if c > now and c < best then best = c end
  c = num(f.lastHeartbeatAt, 0) + hb_timeout(f, T)
  if c > now and c < best then best = c end
  return best
end

-- The rooms of a session, sorted.
local function session_rooms(f)
  local rooms = {}
  for k, _ in pairs(f) do add_room(rooms, k) end
  table.sort(rooms)
  return rooms
end

-- JSON is written here by hand rather than with cjson.encode: encoding a
-- table formats every number with "%.14g", which made the event and the
-- member most of a status change's Lua time. Ids need no escaping (their
-- characters are [A-Za-z0-9_.:@-], checked by every node before a write);
-- the handle is the only free text and is escaped with cjson. Integers
-- stored in the hash are spliced in as the text they are.

-- A stored integer field as JSON (0 when absent).
local function jint(v)
  if v == nil or v == false or v == '' then return '0' end
  if type(v) == 'number' then return string.format('%d', v) end
  return v
end

-- The v1 event about this session in `room`, as JSON left open at its end:
-- room_put.lua / room_del.lua close it with the room's seq
-- (`,"seq":<n>}`), one concatenation where replacing a placeholder inside
-- the text cost more than the rest of a room write together.
-- Unless it takes the session out, it carries the member as the room keeps
-- it (member_json below), so that followers apply it without reading the
-- room. The state is spliced in as stored, never decoded and re-encoded.
local function event_json(f, room, kind, status, now)
  local e = '{"v":1,"type":"' .. kind .. '","roomId":"' .. room .. '","userId":"' ..
    f.userId .. '","sessionId":"' .. f.sid .. '","nodeId":"' .. (f.n or '') .. '","epoch":' ..
    jint(f.epoch) .. ',"status":"' .. status .. '","ts":' .. jint(now)
  if kind == 'leave' or kind == 'expire' then return e end
  if f.h ~= nil and f.h ~= '' then e = e .. ',"handle":' .. cjson.encode(f.h) end
  e = e .. ',"lastHeartbeatAt":' .. jint(f.lastHeartbeatAt) .. ',"lastActiveAt":' .. jint(f.la) ..
    ',"stateUpdatedAt":' .. jint(f['su:' .. room])
  -- Readiness and capabilities (`rd`, `cp`: absent when the default): the
  -- names are validated by the node ([a-z0-9_.:-]), so they need no escaping.
  if f.rd ~= nil and f.rd ~= '' and f.rd ~= 'available' then e = e .. ',"readiness":"' .. f.rd .. '"' end
  if f.cp ~= nil and f.cp ~= '' then
    e = e .. ',"capabilities":["' .. (string.gsub(f.cp, ',', '","')) .. '"]'
  end
  local state = f['r:' .. room]
  if state ~= nil and state ~= '' then e = e .. ',"state":' .. state end
  return e
end

-- What a room keeps of a member (room_put.lua stores it, room_read.lua
-- returns it): enough to build the room's view without reading the session.
-- Timestamps are as of the member's last projection; the state is spliced in
-- as stored.
local function member_json(f, room)
  local h = '""'
  if f.h ~= nil and f.h ~= '' then h = cjson.encode(f.h) end
  local m = '{"h":' .. h .. ',"st":"' .. f.st .. '","hb":' ..
    jint(f.lastHeartbeatAt) .. ',"la":' .. jint(f.la) .. ',"su":' .. jint(f['su:' .. room]) ..
    ',"e":' .. jint(f.epoch) .. ',"n":"' .. (f.n or '') .. '"'
  if f.rd ~= nil and f.rd ~= '' and f.rd ~= 'available' then m = m .. ',"rd":"' .. f.rd .. '"' end
  if f.cp ~= nil and f.cp ~= '' then m = m .. ',"cp":"' .. f.cp .. '"' end
  local state = f['r:' .. room]
  if state ~= nil and state ~= '' then m = m .. ',"s":' .. state end
  return m .. '}'
end

-- How long a session's hash outlives its removal deadline (its TTL margin).
-- Until then the sweeper finds the session through the deadline index; a room
-- checks its member's session only after it (`x` below).
local KEEP = 60000

-- One projection of the session into `room`: the event observers get (when
-- `visible`), the member the room keeps, and `x`, when the room's expiry
-- index should next check that the session still holds its membership.
local function room_put(f, room, kind, now, visible, T)
  return {
    room = room, ev = event_json(f, room, kind, f.st, now), m = member_json(f, room), visible = visible,
    x = removal_deadline(f, T) + KEEP,
  }
end

-- The projections of a status change into every room of the session
-- (`rooms`: as load_session listed them, when f's rooms have not changed
-- since).
local function status_puts(f, visible, now, T, rooms)
  local puts = {}
  for _, room in ipairs(rooms or session_rooms(f)) do
    puts[#puts + 1] = room_put(f, room, 'status', now, visible, T)
  end
  return puts
end

-- The removals of the session from every room, as `kind` ('leave' | 'expire');
-- `rooms` as for status_puts.
local function room_dels(f, kind, now, rooms)
  local dels = {}
  for _, room in ipairs(rooms or session_rooms(f)) do
    dels[#dels + 1] = { room = room, ev = event_json(f, room, kind, 'offline', now) }
  end
  return dels
end

-- Re-derives the recorded status after a change of the facts. Returns the
-- new status and whether it changed (the caller writes it).
local function rederive(f, now, T)
  local st = liveness(f, now, T)
  if st == 'expired' then st = 'stale' end
  local changed = st ~= f.st
  f.st = st
  return st, changed
end

-- How much further than it must the TTL is set, so that heartbeats (each
-- moves the deadline by one interval) set it again only once in a while.
local TTL_SLACK = 300000

-- Keeps the session key at least KEEP past its removal deadline. The TTL is
-- set with TTL_SLACK more and the instant it runs to is kept in the field
-- `ttl`, so a heartbeat sets it only once that slack is used up, not on
-- every beat. A key may outlive its deadline by up to KEEP + TTL_SLACK; the
-- sweeper, not the TTL, ends a session on time. Called after the hash is
-- written.
local function keep(key, f, now, T)
  local need = removal_deadline(f, T) + KEEP
  if num(f.ttl, 0) >= need then return end
  local untl = need + TTL_SLACK
  redis.call('PEXPIRE', key, math.max(1, untl - now))
  redis.call('HSET', key, 'ttl', untl)
  f.ttl = untl
end

-- Wants the deadline index to hold an entry no later than the next deadline;
-- returns that deadline when the index must be told (the caller ZADDs it),
-- nil when the entry it has is early enough (entries may be early, never late).
local function index_update(key, f, now, T)
  local nd = next_deadline(f, now, T)
  local ix = num(f.ix, nil)
  if ix == nil or nd < ix then
    redis.call('HSET', key, 'ix', nd)
    return nd
  end
  return nil
end

-- The last heartbeat time that needs no new TTL (see keep): a connected
-- session's node may write later times by themselves (beats.lua) only up to
-- it.
local function keep_until(f, T)
  return num(f.ttl, 0) - hb_timeout(f, T) - T.grace - KEEP
end

-- What beats.lua checks before it writes a session's heartbeat times: its
-- epoch and recorded status, kept in the field `g` by every script that
-- changes either (a tombstone has none). One field, because reading one is
-- what makes a written beat cheap.
local function guard(f)
  return f.epoch .. ':' .. f.st
end

-- Leaves a tombstone: the epoch and version survive the session for T.tomb
-- ms so that a session id used again starts above them.
local function bury(key, f, T)
  redis.call('DEL', key)
  redis.call('HSET', key, 'dead', '1', 'epoch', f.epoch, 'v', f.v, 'userId', f.userId)
  redis.call('PEXPIRE', key, T.tomb)
end

-- Checks the caller's epoch against the session's. Returns an error reply
-- table, or nil when the caller owns the session. Only the exact current
-- epoch of a connected session may write: an older one lost the session to a
-- newer connection, a higher one is forged (only claim.lua issues epochs).
local function fence(f, epoch)
  if f == nil then return cjson.encode({ err = 'no_session' }) end
  if f.dead == '1' then
    -- Removed. Its last owner may claim it again (no_session); an older
    -- connection lost it before that (stale_epoch).
    if tonumber(epoch) < tonumber(f.epoch) then
      return cjson.encode({ err = 'stale_epoch', current = tonumber(f.epoch) })
    end
    return cjson.encode({ err = 'no_session' })
  end
  if tostring(f.epoch) ~= tostring(epoch) or (f.d ~= nil and f.d ~= '') then
    return cjson.encode({ err = 'stale_epoch', current = tonumber(f.epoch) })
  end
  return nil
end

-- A user's derived status from their user hash (sessionId ->
-- '<version>|<status>|<lastActiveAt>'): the best of the sessions' (active,
-- idle, away, stale), 'offline' with none, as presence_core::user::derive_user
-- has it. An entry written by an older build (a bare version) counts as stale.
local USER_RANK = { active = 1, idle = 2, away = 3, stale = 4 }
local USER_STATUS = { 'active', 'idle', 'away', 'stale' }
local function user_status(key)
  local best = 5
  for _, v in ipairs(redis.call('HVALS', key)) do
    local r = USER_RANK[string.match(v, '^%d+|(%a+)') or 'stale'] or 4
    if r < best then best = r end
  end
  return USER_STATUS[best] or 'offline'
end
