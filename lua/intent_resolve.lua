-- intent_resolve.lua: resolves a pending intent, once.
--
-- KEYS[1]  the callee's intents  <prefix>:it:{<userId>}
-- ARGV[1]  now (ms)   ARGV[2] intentId
-- ARGV[3]  the outcome as JSON   ARGV[4] '1' when the outcome is `expired`
--
-- Reply: the resolved intent (JSON), or '' when it is gone, resolved
-- already, or past its TTL and the outcome is not `expired` (the same rule
-- as `Intent::resolve` in presence-core). The outcome is appended to the
-- stored JSON, which ends with `}` and has none (see intent_put.lua).
local key = KEYS[1]
local now = tonumber(ARGV[1])
local rec = redis.call('HGET', KEYS[1], ARGV[2])
if not rec then return '' end
if string.find(rec, '"outcome":', 1, true) then return '' end
local exp = tonumber(string.match(rec, '"expiresAt":(%d+)')) or 0
if now >= exp and ARGV[4] ~= '1' then return '' end
rec = string.sub(rec, 1, -2) .. ',"outcome":' .. ARGV[3] .. '}'
redis.call('HSET', key, ARGV[2], rec)
return rec
