-- A batch of rate-limit decisions, atomic in Redis (GCRA, the algorithm the
-- local limiter uses), taken in order as if each were its own call.
-- KEYS[i]: the state of decision i, its key's theoretical arrival time in
-- microseconds on Redis's clock. ARGV[2i-1]: microseconds between requests
-- at that key's sustained rate; ARGV[2i]: its burst, max_attempts.
-- Returns three numbers per decision: allowed (1/0), remaining, and the
-- microseconds until the full allowance is back (allowed) or until the next
-- request may pass (limited).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
-- A key asked for more than once in the batch is read and written once.
local tats = {}
local written = {}
local replies = {}
for i, state in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = interval * tonumber(ARGV[2 * i])
  local tat = tats[state]
  if tat == nil then
    tat = tonumber(redis.call('GET', state) or now)
  end
  if tat < now then
    tat = now
  end
  tats[state] = tat
  local new_tat = tat + interval
  local allow_at = new_tat - period
  local n = #replies
  if now < allow_at then
    replies[n + 1] = 0
    replies[n + 2] = 0
    replies[n + 3] = allow_at - now
  else
    local busy = new_tat - now
    tats[state] = new_tat
    written[state] = true
    replies[n + 1] = 1
    replies[n + 2] = math.floor((period - busy) / interval)
    replies[n + 3] = busy
  end
end
for state in pairs(written) do
  local tat = tats[state]
  -- %d: a plain number would be written with 14 significant digits and lose
  -- the microseconds.
  redis.call('SET', state, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return replies
