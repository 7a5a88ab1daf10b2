-- Admit one request: every take of its matched policies, all or none (limiters.lua precedes this).
--
-- KEYS: the marker hash when ARGV[3] is '1', then two per take: the limit's state hash and its
--       reservation set (see limiters.lua).
-- ARGV: [1] now in ms ('' = the server's TIME), [2] reservation and lease time to live (ms),
--       [3] '1' when KEYS[1] is the marker, [4] with the marker: how long budgets wait for a
--       rebuild after a data loss (ms); without it (Redis Cluster, where the marker is in another
--       slot): '1' when budgets wait, then six per take: kind, p1, p2, p3, amount, flags (1
--       enforce, 2 clip the amount to what is left (budgets), 4 only read what is used).
--
-- Takes are applied in order. An enforcing take that is denied ends the script and nothing is
-- written (what earlier takes made is dropped with it); a shadow take that would be denied is
-- not taken and the others go on. While budgets wait for a rebuild from the ledger, budget takes
-- are not applied (answer 3): the gateway applies the policy's `on_store_unavailable` to them.
--
-- The marker holds `g`, the generation (the time the store was found empty, ms), and `r`, until
-- when budgets wait for the rebuild. A missing marker means the store lost its data (or is new):
-- this script starts a new generation.
--
-- Returns {admitted (1/0), generation, now, new generation (1/0), budgets wait (1/0), then five
-- per take evaluated}: {1, id, remaining, reset after, amount} granted (id '0': nothing to
-- settle; `amount` after clipping), {0, used, requested, retry after (-1: never), window} denied,
-- {2, used, 0, 0, 0} read only, {3, 0, 0, 0, 0} not applied (budgets during a rebuild).

local now, real_time = clock(ARGV[1])
local ttl = tonumber(ARGV[2])
local markers = tonumber(ARGV[3])
local generation, fresh, rebuilding = '', 0, ARGV[4] == '1'
if markers == 1 then
  local marker = redis.call('HMGET', KEYS[1], 'g', 'r')
  if marker[1] then
    generation = marker[1]
    rebuilding = marker[2] ~= false and tonumber(marker[2]) > now
  else
    local wait = tonumber(ARGV[4])
    generation = fmt(now)
    redis.call('HSET', KEYS[1], 'g', generation, 'r', fmt(now + wait))
    fresh = 1
    rebuilding = wait > 0
  end
end

local out = {1, generation, now, fresh, rebuilding and 1 or 0}
local opened = {}
local order = {}
for i = 1, (#ARGV - 4) / 6 do
  local a = 4 + (i - 1) * 6
  local kind = ARGV[a + 1]
  local amount = tonumber(ARGV[a + 5])
  local flags = tonumber(ARGV[a + 6])
  if rebuilding and (kind == 'k' or kind == 'w') then
    for _, v in ipairs({3, 0, 0, 0, 0}) do
      out[#out + 1] = v
    end
  else
    local skey = KEYS[markers + 2 * i - 1]
    local lim = opened[skey]
    if lim == nil then
      lim = open(kind, skey, KEYS[markers + 2 * i], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
        tonumber(ARGV[a + 4]), ttl, now, real_time)
      opened[skey] = lim
      order[#order + 1] = lim
    end
    local answer
    if flags % 8 >= 4 then
      answer = {2, used(lim), 0, 0, 0}
    else
      if flags % 4 >= 2 and (kind == 'k' or kind == 'w') then
        local left = lim.p1 - used(lim)
        if left > 0 and left < amount then
          amount = left
        end
      end
      answer = reserve(lim, amount)
    end
    for _, v in ipairs(answer) do
      out[#out + 1] = v
    end
    if answer[1] == 0 and flags % 2 == 1 then
      out[1] = 0
      return out
    end
  end
end
for _, lim in ipairs(order) do
  commit(lim)
end
return out
