-- beats.lua: the times of heartbeats that a node answered itself, written in
-- bulk (a node vouches for its own sessions: see
-- crates/presence-core/src/vouch.rs and docs/architecture.md).
--
-- KEYS     none: the session keys are in ARGV. On a Cluster one call holds
--          the sessions of one master, of any slots (the function is
--          registered with the flag allow-cross-slot-keys); on one server, any.
-- ARGV     4 per session: key, guard ('<epoch>:<status>' as vouched for),
--          heartbeat time, activity time ('' = not moved)
--
-- Reply: one character per session, in order: '1' written, '0' refused:
-- the session is not the one its node vouched for any more (another epoch,
-- removed, or its recorded status moved: disconnected, or the sweeper
-- re-derived it); nothing is written for it and its node forgets it.
--
-- A session costs one HGET of its guard (`g`, kept by every script that
-- changes the epoch or the status) and one HSET: reading more fields cost
-- more than twice as much. Nothing else is needed. The node answers beats
-- itself only while the key's TTL needs no renewing (`keep_until`) and the
-- status cannot have moved by itself; no room hears of a quiet beat (a
-- member's times are as of its last projection); the deadline index needs
-- no write (later times only move deadlines later, and an entry may be
-- early, never late). Times are written as given: only the session's node
-- writes them, and one it wrote through heartbeat.lua meanwhile is at most
-- a flush period newer, inside the margin its node keeps.
local out = {}
for i = 1, #ARGV, 4 do
  local key = ARGV[i]
  if redis.call('HGET', key, 'g') ~= ARGV[i + 1] then
    out[#out + 1] = '0'
  else
    local la = ARGV[i + 3]
    if la ~= '' then
      redis.call('HSET', key, 'lastHeartbeatAt', ARGV[i + 2], 'la', la)
    else
      redis.call('HSET', key, 'lastHeartbeatAt', ARGV[i + 2])
    end
    out[#out + 1] = '1'
  end
end
return table.concat(out)
