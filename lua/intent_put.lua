-- intent_put.lua: files a new intent with its callee.
--
-- KEYS[1]  the callee's intents  <prefix>:it:{<userId>}  (intentId -> intent JSON)
-- ARGV[1]  now (ms)   ARGV[2] intentId   ARGV[3] the intent as JSON (no `outcome`)
-- ARGV[4]  how long an intent is kept past its TTL (ms)
-- ARGV[5]  most intents that may wait for the callee
--
-- Reply: 1 when filed, -1 when ARGV[5] already wait (nothing written).
--
-- Intents are JSON written by the node; this script reads only `expiresAt`
-- and whether an `outcome` is there (neither can appear unescaped inside a
-- string of the JSON, so plain matching is exact). Entries past their TTL
-- and the keep window are removed here: the hash holds at most ARGV[5]
-- pending intents and those kept for delivery.
local key = KEYS[1]
local now, keep, cap = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local raw = redis.call('HGETALL', key)
local pending, last = 0, 0
for i = 1, #raw, 2 do
  local exp = tonumber(string.match(raw[i + 1], '"expiresAt":(%d+)')) or 0
  if now >= exp + keep then
    redis.call('HDEL', key, raw[i])
  else
    if exp > last then last = exp end
    if now < exp and not string.find(raw[i + 1], '"outcome":', 1, true) then pending = pending + 1 end
  end
end
if pending >= cap then return -1 end
local exp = tonumber(string.match(ARGV[3], '"expiresAt":(%d+)')) or now
if exp > last then last = exp end
redis.call('HSET', key, ARGV[2], ARGV[3])
-- Relative: the store's clock, not Redis's, says what time it is.
redis.call('PEXPIRE', key, math.max(last + keep - now, 1))
return 1
