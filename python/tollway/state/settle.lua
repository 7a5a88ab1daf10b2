-- End what admitted requests hold (limiters.lua precedes this).
--
-- KEYS: two per item: the limit's state hash and its reservation set.
-- ARGV: [1] now in ms ('' = the server's TIME), [2] reservation time to live (ms), then six per
--       item: kind, p1, p2, p3, reservation id ('0': none), actual amount (-1: release).
--
-- An item with an id settles that reservation at the actual amount (or releases it, or ends the
-- lease); an unknown id (settled, released, expired, or lost with the store's data) changes
-- nothing. An item without an id charges the amount as usage without a reservation, or, with a
-- negative amount, gives that much back to a request rate (undoing its take, which holds
-- nothing, when another part of the request was denied).
-- Returns how many reservations were known.

local now, real_time = clock(ARGV[1])
local ttl = tonumber(ARGV[2])
local opened = {}
local order = {}
local known = 0
for i = 1, (#ARGV - 2) / 6 do
  local a = 2 + (i - 1) * 6
  local kind = ARGV[a + 1]
  local skey = KEYS[2 * i - 1]
  local lim = opened[skey]
  if lim == nil then
    lim = open(kind, skey, KEYS[2 * i], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
      ttl, now, real_time)
    opened[skey] = lim
    order[#order + 1] = lim
  end
  local id = ARGV[a + 5]
  local actual = tonumber(ARGV[a + 6])
  if id ~= '0' then
    if finish(lim, id, actual) then
      known = known + 1
    end
  elseif actual > 0 then
    debit(lim, actual)
  elseif actual < 0 and kind == 'r' then
    bucket_release(lim, -actual)
    lim.changed = true
  end
end
for _, lim in ipairs(order) do
  commit(lim)
end
return known
