-- Rebuild budget windows after a data loss from one ledger's records (limiters.lua precedes this).
--
-- KEYS: the marker hash when ARGV[3] is '1', the once-per-ledger flag, then two per seed: the
--       budget's state hash and its reservation set.
-- ARGV: [1] now in ms ('' = the server's TIME), [2] reservation time to live (ms), [3] '1' when
--       KEYS[1] is the marker, [4] the generation the seeds are for, [5] how long the flag is
--       kept (ms), [6] '1' for the first part of this ledger's seeds (it takes the flag), [7] '1'
--       for the last part (it ends the budgets' wait), then six per seed: kind, p1, p2, p3,
--       window or sub-bucket index, amount.
--
-- Each ledger contributes once per generation (the flag), so workers sharing a ledger file do
-- not count it twice, and replicas with a ledger each add theirs. Its seeds come in parts, so
-- that no script keeps Redis busy for long; the process that took the flag sends the rest. A
-- seed whose window no longer counts is dropped.
-- Returns the number of seeds applied, -2 when this ledger was already applied, -1 when the
-- store lost its data again since the generation began.

local now, real_time = clock(ARGV[1])
local ttl = tonumber(ARGV[2])
local markers = tonumber(ARGV[3])
if markers == 1 and redis.call('HGET', KEYS[1], 'g') ~= ARGV[4] then
  return -1
end
if ARGV[6] == '1' and not redis.call('SET', KEYS[markers + 1], '1', 'NX', 'PX', ARGV[5]) then
  return -2
end
local opened = {}
local order = {}
local applied = 0
for i = 1, (#ARGV - 7) / 6 do
  local a = 7 + (i - 1) * 6
  local skey = KEYS[markers + 2 * i]
  local lim = opened[skey]
  if lim == nil then
    lim = open(ARGV[a + 1], skey, KEYS[markers + 2 * i + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
      tonumber(ARGV[a + 4]), ttl, now, real_time)
    opened[skey] = lim
    order[#order + 1] = lim
  end
  seed(lim, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]))
  applied = applied + 1
end
for _, lim in ipairs(order) do
  commit(lim)
end
if markers == 1 and ARGV[7] == '1' then
  redis.call('HDEL', KEYS[1], 'r')
end
return applied
