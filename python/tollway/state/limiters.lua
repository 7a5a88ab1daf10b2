-- The native limiters' semantics (rust/core/src/limiter/mod.rs) as Redis server-side Lua.
--
-- This file is the common part of every script: `tollway.state.scripts` prepends it to
-- admit.lua, settle.lua and seed.lua when loading them. It defines no globals (Redis refuses
-- them); everything is `local`.
--
-- Numbers. Redis runs Lua 5.1, whose numbers are doubles: integers are exact below 2^53. All
-- arithmetic here is on integers (milliseconds, amounts, ticks) and stays below that bound
-- for every configuration `tollway.state.redis` accepts (it refuses rates whose capacity in
-- ticks, burst x period / gcd(limit, period), reaches 2^50, leaving room for debt). Division
-- is `idiv` (exact floor division, corrected after the floating-point quotient). Numbers
-- handed to Redis commands go through `fmt` ('%.0f'), because Lua's own number-to-string
-- conversion keeps 14 significant digits and would round ids and scores.
--
-- One limit at one partition is two keys with the same hash tag: a hash (the state) and a
-- sorted set (outstanding reservations or leases, scored by expiry time). Hash fields:
--   t        the latest `now` seen: time never goes back for a key (a failover to a replica
--            whose clock is behind must not hand out capacity twice)
--   n        the last reservation id handed out (the first is now x 1024 + 1, so ids stay
--            unique across a loss of the key, below 2^53 until the year 2245)
--   e        no reservation or lease expires before this ms (absent: none outstanding), so
--            the sorted set is searched for expired ones only when one may be due
--   r<id>    one outstanding reservation: its estimate (token buckets) or
--            `estimate:window-index` (budgets); concurrency leases are sorted-set members only
--   a, b, h  token buckets: the theoretical arrival time as ms `a` plus `b` ticks (0 <= b <
--            limit), and the amount held by reservations
--   w, u     calendar budgets: the window index and the usage in it
--   x, y, s<k> rolling budgets: the newest sub-bucket index, the total, and sub-bucket k of the
--            ring of buckets + 1 (absent = 0)
--
-- Kinds: 'r' request rate (a bucket take of 1 with nothing held: final at admission), 't' token
-- bucket (held until settled), 'c' concurrency leases, 'k' calendar budget, 'w' rolling budget.
-- Parameters p1, p2, p3: buckets: limit and period (ms) divided by their gcd, and the burst;
-- concurrency: the limit; calendar: the limit, the period (0 day, 1 week, 2 month) and the UTC
-- offset (s); rolling: the limit, the window (ms) and the number of sub-buckets.
--
-- Every operation first brings the state to `now`: reservations that expired are applied each at
-- its own expiry time (token buckets: the estimate counts as spent and the hold ends; budgets: the
-- estimate stays charged), calendar windows reset, rolling sub-buckets leave. Changes are kept in
-- the `lim` table and written by `commit`, so a script can drop them all (an admission that is
-- denied writes nothing).

local MARGIN_MS = 1000

local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function cdiv(a, b)
  return -idiv(-a, b)
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- `now` in ms: given by the caller (tests), or Redis's clock; and whether it is the latter.
local function clock(arg)
  if arg ~= '' then
    return tonumber(arg), false
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000), true
end

-- Calendar windows: Howard Hinnant's civil-date algorithms, as in calendar.rs.
local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = idiv(y, 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = idiv(153 * mp + 2, 5) + d - 1
  local doe = yoe * 365 + idiv(yoe, 4) - idiv(yoe, 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(days)
  local z = days + 719468
  local era = idiv(z, 146097)
  local doe = z - era * 146097
  local yoe = idiv(doe - idiv(doe, 1460) + idiv(doe, 36524) - idiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + idiv(yoe, 4) - idiv(yoe, 100))
  local mp = idiv(5 * doy + 2, 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m
end

-- The window of `period` containing `now`: its index, first ms and the next window's first ms.
local function calendar(period, offset_s, now)
  local offset = offset_s * 1000
  local day = idiv(now + offset, 86400000)
  local index, first, following
  if period == 0 then
    index, first, following = day, day, day + 1
  elseif period == 1 then
    -- 1970-01-01 was a Thursday: Monday 1969-12-29 is day -3.
    local week = idiv(day + 3, 7)
    index, first, following = week, week * 7 - 3, week * 7 + 4
  else
    local y, m = civil_from_days(day)
    local ny, nm = y, m + 1
    if m == 12 then
      ny, nm = y + 1, 1
    end
    index = (y - 1970) * 12 + m - 1
    first = days_from_civil(y, m, 1)
    following = days_from_civil(ny, nm, 1)
  end
  return index, first * 86400000 - offset, following * 86400000 - offset
end

-- Token buckets (rate.rs `Pace`), with ticks counted relative to `at`: the backlog is how far
-- the effective theoretical arrival time is ahead of `at`, at least what is held.
local function backlog(lim, at)
  local e = lim.hd * lim.p2
  if lim.ta ~= nil and lim.ta >= at then
    local d = (lim.ta - at) * lim.p1 + lim.tr
    if d > e then
      e = d
    end
  end
  return e
end

local function set_tat(lim, at, ticks)
  local q = idiv(ticks, lim.p1)
  lim.ta = at + q
  lim.tr = ticks - q * lim.p1
end

local function bucket_expire(lim, at, estimate)
  set_tat(lim, at, backlog(lim, at))
  lim.hd = math.max(0, lim.hd - estimate)
end

local function bucket_debit(lim, amount)
  set_tat(lim, lim.now, backlog(lim, lim.now) + amount * lim.p2)
end

local function bucket_release(lim, amount)
  local e = backlog(lim, lim.now)
  lim.hd = math.max(0, lim.hd - amount)
  set_tat(lim, lim.now, math.max(e - amount * lim.p2, lim.hd * lim.p2))
end

-- Rolling budgets.
local function leaves_at(lim, index)
  return (index + lim.p3 + 1) * lim.width
end

local function charge(lim, amount)
  if lim.kind == 'k' then
    lim.u = lim.u + amount
  else
    local k = lim.nw % lim.len
    lim.slots[k] = lim.slots[k] + amount
    lim.tot = lim.tot + amount
  end
end

-- Give back `amount` charged to window (or sub-bucket) `index`, if it still counts.
local function refund(lim, index, amount)
  if lim.kind == 'k' then
    if lim.w == index then
      lim.u = math.max(0, lim.u - amount)
    end
  elseif index > lim.nw - lim.len and index <= lim.nw then
    local k = index % lim.len
    local back = math.min(amount, lim.slots[k])
    lim.slots[k] = lim.slots[k] - back
    lim.tot = lim.tot - back
  end
end

-- Reservation bookkeeping: changes to `r<id>` fields and to the sorted set, applied at commit.
local function forget(lim, id)
  if lim.kind ~= 'c' then
    lim.records[id] = false
    lim.fields['r' .. id] = false
  end
  if lim.zadd[id] ~= nil then
    lim.zadd[id] = nil
  else
    lim.zrem[id] = true
  end
end

local function remember(lim, id, value, expires_at)
  if value ~= nil then
    lim.records[id] = value
    lim.fields['r' .. id] = value
  end
  lim.zadd[id] = expires_at
  if lim.e == nil or expires_at < lim.e then
    lim.e = expires_at
  end
end

-- Reservation `id`'s record, read once per script (a hash holds one field per reservation
-- outstanding, so the state is read field by field, never whole).
local function record(lim, id)
  local value = lim.records[id]
  if value == nil then
    value = redis.call('HGET', lim.s, 'r' .. id)
    lim.records[id] = value
  end
  return value or nil
end

local STATE_FIELDS = {
  r = {'t', 'n', 'a', 'b', 'h'}, t = {'t', 'n', 'e', 'a', 'b', 'h'}, c = {'t', 'n', 'e'}, k = {'t', 'n', 'e', 'w', 'u'},
}

local function new_id(lim)
  local n = lim.n or (lim.now * 1024)
  lim.n = n + 1
  return fmt(lim.n)
end

-- Load one limit at one partition and bring it to `now` (the latest time the key has seen).
local function open(kind, skey, rkey, p1, p2, p3, ttl, now, real_time)
  local fields = STATE_FIELDS[kind]
  if fields == nil then
    fields = {'t', 'n', 'e', 'x', 'y'}
    for k = 0, p3 do
      fields[#fields + 1] = 's' .. k
    end
  end
  local values = redis.call('HMGET', skey, unpack(fields))
  local h = {}
  for i, field in ipairs(fields) do
    if values[i] then
      h[field] = values[i]
    end
  end
  local seen = tonumber(h.t)
  if seen ~= nil and seen > now then
    now = seen
  end
  local lim = {
    kind = kind, s = skey, r = rkey, p1 = p1, p2 = p2, p3 = p3, ttl = ttl, now = now, h = h,
    real_time = real_time, n = tonumber(h.n), e = tonumber(h.e), fields = {}, records = {}, zadd = {}, zrem = {},
    changed = false, expired = false,
  }
  -- Something may have expired: the sorted set is searched, and `e` moves to the next expiry.
  local due = lim.e ~= nil and lim.e <= now
  if due then
    local following = redis.call('ZRANGEBYSCORE', rkey, '(' .. fmt(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    lim.e = tonumber(following[2])
    lim.changed = true
  end
  if kind == 'r' or kind == 't' then
    lim.ta = tonumber(h.a)
    lim.tr = tonumber(h.b) or 0
    lim.hd = tonumber(h.h) or 0
  elseif kind == 'c' then
    if due then
      lim.live = redis.call('ZCOUNT', rkey, '(' .. fmt(now), '+inf')
      lim.expired = true
    else
      lim.live = redis.call('ZCARD', rkey)
    end
  elseif kind == 'k' then
    local index, first, following = calendar(p2, p3, now)
    lim.start, lim.stop = first, following
    lim.w = tonumber(h.w) or index
    lim.u = tonumber(h.u) or 0
    if lim.w ~= index then
      lim.w, lim.u = index, 0
    end
  else
    lim.len = p3 + 1
    lim.width = idiv(p2, p3)
    local index = idiv(now, lim.width)
    lim.slots = {}
    for k = 0, lim.len - 1 do
      lim.slots[k] = tonumber(h['s' .. k]) or 0
    end
    lim.nw = tonumber(h.x) or index
    lim.tot = tonumber(h.y) or 0
    if index > lim.nw then
      if index - lim.nw >= lim.len then
        for k = 0, lim.len - 1 do
          lim.slots[k] = 0
        end
        lim.tot = 0
      else
        for i = lim.nw + 1, index do
          local k = i % lim.len
          lim.tot = lim.tot - lim.slots[k]
          lim.slots[k] = 0
        end
      end
      lim.nw = index
    end
  end
  if due and kind ~= 'c' then
    local expired = redis.call('ZRANGEBYSCORE', rkey, '-inf', fmt(now), 'WITHSCORES')
    for i = 1, #expired, 2 do
      local id = expired[i]
      local held = record(lim, id)
      if kind == 't' and held ~= nil then
        bucket_expire(lim, tonumber(expired[i + 1]), tonumber(held))
      end
      forget(lim, id)
    end
  end
  return lim
end

-- What is in use now: compared with the burst (buckets) or the limit.
local function used(lim)
  local kind = lim.kind
  if kind == 'r' or kind == 't' then
    return cdiv(backlog(lim, lim.now), lim.p2)
  elseif kind == 'c' then
    return lim.live
  elseif kind == 'k' then
    return lim.u
  end
  return lim.tot
end

-- Take `amount`: {1, id (0: none), remaining, reset after (ms), amount} or
-- {0, used, requested, retry after (ms; -1: waiting cannot help), window (ms; -1: none)}.
local function reserve(lim, amount)
  local kind, now = lim.kind, lim.now
  if kind == 'r' or kind == 't' then
    local e = backlog(lim, now)
    local after = e + amount * lim.p2
    local tolerance = lim.p3 * lim.p2
    if after > tolerance then
      local retry = -1
      if amount <= lim.p3 then
        retry = cdiv(after - tolerance, lim.p1)
      end
      return {0, cdiv(e, lim.p2), amount, retry, 0}
    end
    set_tat(lim, now, after)
    lim.changed = true
    local id = '0'
    if kind == 't' then
      lim.hd = lim.hd + amount
      id = new_id(lim)
      remember(lim, id, fmt(amount), now + lim.ttl)
    end
    return {1, id, idiv(tolerance - after, lim.p2), cdiv(after, lim.p1), amount}
  elseif kind == 'c' then
    if lim.live >= lim.p1 then
      -- Retry when the oldest lease in flight expires (leases taken by this script included).
      local oldest = redis.call('ZRANGEBYSCORE', lim.r, '(' .. fmt(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      local first = nil
      if oldest[2] ~= nil then
        first = tonumber(oldest[2])
      end
      for _, expires_at in pairs(lim.zadd) do
        if first == nil or expires_at < first then
          first = expires_at
        end
      end
      local retry = -1
      if first ~= nil then
        retry = math.max(0, first - now)
      end
      return {0, lim.live, 1, retry, -1}
    end
    lim.live = lim.live + 1
    lim.changed = true
    local id = new_id(lim)
    remember(lim, id, nil, now + lim.ttl)
    return {1, id, lim.p1 - lim.live, lim.ttl, amount}
  end
  local limit = lim.p1
  local in_use = used(lim)
  if in_use + amount > limit then
    local window, retry = 0, -1
    if kind == 'k' then
      window = lim.stop - lim.start
      if amount <= limit then
        retry = lim.stop - now
      end
    else
      window = lim.p2
      if amount <= limit then
        -- Sub-buckets leave the sum oldest first: the first moment enough of them have left.
        local need = in_use + amount - limit
        local freed = 0
        for i = lim.nw - lim.len + 1, lim.nw do
          freed = freed + lim.slots[i % lim.len]
          if freed >= need then
            retry = math.max(0, leaves_at(lim, i) - now)
            break
          end
        end
        if retry < 0 then
          retry = math.max(0, leaves_at(lim, lim.nw) - now)
        end
      end
    end
    return {0, in_use, amount, retry, window}
  end
  charge(lim, amount)
  lim.changed = true
  local id = new_id(lim)
  local index = lim.w or lim.nw
  remember(lim, id, fmt(amount) .. ':' .. fmt(index), now + lim.ttl)
  local reset = 0
  if kind == 'k' then
    reset = lim.stop - now
  else
    for i = lim.nw - lim.len + 1, lim.nw do
      if lim.slots[i % lim.len] > 0 then
        reset = math.max(0, leaves_at(lim, i) - now)
        break
      end
    end
  end
  return {1, id, limit - used(lim), reset, amount}
end

-- End reservation `id`: settle at `actual`, or release when `actual` < 0. False if unknown
-- (settled, released or expired: then nothing changes).
local function finish(lim, id, actual)
  local kind = lim.kind
  if kind == 'c' then
    -- Leases are members of the sorted set only; one at or past its expiry is gone.
    local score = lim.zadd[id]
    if score == nil then
      local stored = redis.call('ZSCORE', lim.r, id)
      if stored then
        score = tonumber(stored)
      end
    end
    if score == nil or score <= lim.now or lim.zrem[id] then
      return false
    end
    forget(lim, id)
    lim.live = lim.live - 1
    lim.changed = true
    return true
  end
  local held = record(lim, id)
  if held == nil then
    return false
  end
  forget(lim, id)
  lim.changed = true
  if kind == 't' then
    local estimate = tonumber(held)
    bucket_release(lim, estimate)
    if actual >= 0 then
      bucket_debit(lim, actual)
    end
    return true
  end
  local sep = string.find(held, ':', 1, true)
  local estimate = tonumber(string.sub(held, 1, sep - 1))
  local index = tonumber(string.sub(held, sep + 1))
  if actual < 0 then
    refund(lim, index, estimate)
  elseif actual < estimate then
    refund(lim, index, estimate - actual)
  else
    charge(lim, actual - estimate)
  end
  return true
end

-- Charge usage that had no reservation (into debt for buckets; concurrency has no usage).
local function debit(lim, amount)
  local kind = lim.kind
  if kind == 'r' or kind == 't' then
    bucket_debit(lim, amount)
  elseif kind == 'k' or kind == 'w' then
    charge(lim, amount)
  else
    return
  end
  lim.changed = true
end

-- Add usage recorded elsewhere (the ledger) to window or sub-bucket `index`, if it counts now.
local function seed(lim, index, amount)
  if lim.kind == 'k' then
    if lim.w ~= index then
      return
    end
    lim.u = lim.u + amount
  else
    if index <= lim.nw - lim.len or index > lim.nw then
      return
    end
    local k = index % lim.len
    lim.slots[k] = lim.slots[k] + amount
    lim.tot = lim.tot + amount
  end
  lim.changed = true
end

-- Write a limit's changes, and let its keys expire once a fresh key would behave the same.
local function commit(lim)
  if not lim.changed then
    return
  end
  local kind, now = lim.kind, lim.now
  local set = {'t', fmt(now)}
  local del = {}
  if lim.n ~= nil then
    set[#set + 1] = 'n'
    set[#set + 1] = fmt(lim.n)
  end
  if lim.e ~= nil then
    set[#set + 1] = 'e'
    set[#set + 1] = fmt(lim.e)
  elseif lim.h.e ~= nil then
    del[#del + 1] = 'e'
  end
  local keep
  if kind == 'r' or kind == 't' then
    if lim.ta ~= nil then
      set[#set + 1] = 'a'
      set[#set + 1] = fmt(lim.ta)
      set[#set + 1] = 'b'
      set[#set + 1] = fmt(lim.tr)
    end
    set[#set + 1] = 'h'
    set[#set + 1] = fmt(lim.hd)
    -- Full again at the latest when every hold has expired and the backlog has drained.
    keep = cdiv(backlog(lim, now), lim.p1)
    if lim.hd > 0 then
      keep = keep + lim.ttl
    end
  elseif kind == 'c' then
    keep = lim.ttl
  elseif kind == 'k' then
    set[#set + 1] = 'w'
    set[#set + 1] = fmt(lim.w)
    set[#set + 1] = 'u'
    set[#set + 1] = fmt(lim.u)
    keep = math.max(lim.stop - now, lim.ttl)
  else
    set[#set + 1] = 'x'
    set[#set + 1] = fmt(lim.nw)
    set[#set + 1] = 'y'
    set[#set + 1] = fmt(lim.tot)
    for k = 0, lim.len - 1 do
      local field = 's' .. k
      if lim.slots[k] > 0 then
        set[#set + 1] = field
        set[#set + 1] = fmt(lim.slots[k])
      elseif lim.h[field] ~= nil then
        del[#del + 1] = field
      end
    end
    keep = math.max(leaves_at(lim, lim.nw) - now, lim.ttl)
  end
  for field, value in pairs(lim.fields) do
    if value then
      set[#set + 1] = field
      set[#set + 1] = value
    else
      del[#del + 1] = field
    end
  end
  redis.call('HSET', lim.s, unpack(set))
  if #del > 0 then
    redis.call('HDEL', lim.s, unpack(del))
  end
  local gone = {}
  for id in pairs(lim.zrem) do
    gone[#gone + 1] = id
  end
  if #gone > 0 then
    redis.call('ZREM', lim.r, unpack(gone))
  end
  if lim.expired then
    redis.call('ZREMRANGEBYSCORE', lim.r, '-inf', fmt(now))
  end
  local added = {}
  for id, score in pairs(lim.zadd) do
    added[#added + 1] = fmt(score)
    added[#added + 1] = id
  end
  if #added > 0 then
    redis.call('ZADD', lim.r, unpack(added))
  end
  -- Expiry runs on Redis's own clock: with a `now` given by the caller (tests) keys are kept.
  if lim.real_time then
    keep = fmt(keep + MARGIN_MS)
    redis.call('PEXPIRE', lim.s, keep)
    if #added > 0 then
      -- Members only leave the set after that, so its expiry needs no later refresh.
      redis.call('PEXPIRE', lim.r, keep)
    end
  end
end
