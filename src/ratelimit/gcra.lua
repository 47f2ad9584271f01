-- One rate-limit decision, atomic in Redis (GCRA, the algorithm the local
-- limiter uses). KEYS[1]: the key's state, its theoretical arrival time in
-- microseconds on Redis's clock. ARGV[1]: microseconds between requests at
-- the sustained rate; ARGV[2]: the burst, max_attempts.
-- Returns {allowed (1/0), remaining, microseconds until the full allowance
-- is back (allowed) or until the next request may pass (limited)}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local period = interval * burst
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, allow_at - now}
end
local busy = new_tat - now
-- %d: a plain number would be written with 14 significant digits and lose
-- the microseconds.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(busy / 1000))
return {1, math.floor((period - busy) / interval), busy}
