-- intent_reserve.lua: counts a new intent against its caller's limit.
--
-- KEYS[1]  the caller's intents  <prefix>:ib:{<userId>}  (zset: "<intentId> <calleeId>" -> expiresAt)
-- ARGV[1]  now (ms)   ARGV[2] member   ARGV[3] expiresAt
-- ARGV[4]  how long an intent is kept past its TTL (ms)
-- ARGV[5]  most intents the caller may have waiting
--
-- Reply: 1 when counted, -1 when ARGV[5] are waiting (nothing written).
-- Entries stay until their outcome is delivered (the node removes them) or
-- the keep window has passed; only those before their TTL count.
local key = KEYS[1]
local now, exp, keep = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - keep))
if redis.call('ZCOUNT', key, '(' .. now, '+inf') >= tonumber(ARGV[5]) then return -1 end
redis.call('ZADD', key, exp, ARGV[2])
local last = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) or exp
-- Relative: the store's clock, not Redis's, says what time it is.
redis.call('PEXPIRE', key, math.max(last + keep - now, 1))
return 1
