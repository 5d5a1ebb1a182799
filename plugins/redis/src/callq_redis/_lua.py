"""Lua scripts of the list broker. Each runs atomically inside Redis.

Every key of one queue shares the hash tag ``{Q}``, so each script touches one Redis Cluster
slot and different queues spread over the shards. ``B`` is the queue's base ``P:{Q}`` (``P``
the URL's ``prefix``; ``L`` a priority level; ``C`` a consumer id):

* ``B:q``            ready list of priority 0 (LPUSH to publish, RPOP to fetch: FIFO)
* ``B:qpL``          ready list of priority level ``L`` (non-zero)
* ``B:levels``       zset of the non-zero levels that may hold messages (score = level)
* ``B:delayed``      zset of delayed messages, score = due time (Redis server ms);
                     member = 16 hex digits (unique) ``:`` level ``:`` body
* ``B:seq``          counter for unique delayed-member prefixes
* ``B:consumers``    zset consumer id -> last heartbeat (Redis server ms), per queue
* ``B:inflight:C``   hash of a reliable-mode consumer's unacked messages of this queue;
                     field = ``seq:level``, value = body
* ``B:proc:C``       lmove-mode processing list of consumer ``C``

Scripts receive the keys they know in advance in KEYS (which routes them to the queue's
shard) and ``B`` as ARGV[1]. Keys found at run time (a dead consumer's in-flight hash, the
list of a priority level) are built from ``B`` inside the script: they carry the same hash
tag, hence the same slot, which Redis Cluster allows.
Times come from the Redis server (``TIME``), so clients' clocks do not matter.

``WAKE`` (below) is pushed to an empty ready list when a delayed message becomes the next one
due, so fetches blocked on the list wake and shorten their wait to its due time; claims drop it.
A key of another type where callq expects its list or zset (written by other code) is replaced
by a message holding its content as a JSON array: core dead-letters it instead of every fetch
failing with WRONGTYPE.
"""

WAKE = "\x00callq:wake"

COMMON = r"""
local B = ARGV[1]
local WAKE = '\0callq:wake'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function list_key(level)
  if level == '0' then return B .. ':q' end
  return B .. ':qp' .. level
end
-- front: delivered next (recovered messages); otherwise at the end of the queue
local function push_back(level, body, front)
  local key = list_key(level)
  if front then redis.call('RPUSH', key, body) else redis.call('LPUSH', key, body) end
  if level ~= '0' then redis.call('ZADD', B .. ':levels', tonumber(level), level) end
end
local function add_delayed(level, body, due)
  local dkey = B .. ':delayed'
  local head = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  local uniq = string.format('%016x', redis.call('INCR', B .. ':seq'))
  redis.call('ZADD', dkey, due, uniq .. ':' .. level .. ':' .. body)
  -- due before every other delayed message: wake fetches blocked on the empty list
  if (#head == 0 or tonumber(head[2]) > due) and redis.call('LLEN', B .. ':q') == 0 then
    redis.call('LPUSH', B .. ':q', WAKE)
  end
end
-- 1 if the ready list of level 0 holds a wake-up marker (it sits near its oldest end)
local function wake_in(key)
  if redis.call('LPOS', key, WAKE, 'RANK', -1, 'MAXLEN', 1000) then return 1 end
  return 0
end
-- a key of the wrong type (written by other code) becomes a message holding its content
local function repair()
  local qkey = B .. ':q'
  local want = {{qkey, 'list'}, {B .. ':delayed', 'zset'}, {B .. ':levels', 'zset'}}
  for _, kw in ipairs(want) do
    local key, expected = kw[1], kw[2]
    local t = redis.call('TYPE', key)['ok']
    if t ~= expected and t ~= 'none' then
      local content
      if t == 'string' then content = redis.call('GET', key)
      elseif t == 'hash' then content = redis.call('HGETALL', key)
      elseif t == 'set' then content = redis.call('SMEMBERS', key)
      elseif t == 'zset' then content = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
      elseif t == 'list' then content = redis.call('LRANGE', key, 0, -1)
      elseif t == 'stream' then content = redis.call('XRANGE', key, '-', '+')
      else content = t end
      local body = cjson.encode({'redis key ' .. key .. ' is a ' .. t .. ', callq expected a ' .. expected, content})
      redis.call('DEL', key)
      redis.call('LPUSH', qkey, body)
      redis.log(redis.LOG_WARNING, 'callq: ' .. key .. ' was a ' .. t .. ' (expected ' .. expected .. '); its content is now a message')
    end
  end
end
-- move due delayed messages to their lists; return ms until the next one is due (-1: none)
local function promote(now)
  local dkey = B .. ':delayed'
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 1000)
  for i = 1, #due do
    local m = due[i]
    local sep = string.find(m, ':', 18, true)
    push_back(string.sub(m, 18, sep - 1), string.sub(m, sep + 1), false)
  end
  if #due > 0 then redis.call('ZREM', dkey, unpack(due)) end
  local nxt = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  if #nxt == 0 then return -1 end
  return math.max(0, tonumber(nxt[2]) - now)
end
local function field_level(f)
  return string.sub(f, string.find(f, ':', 1, true) + 1)
end
-- put every unacked message of consumer cid on this queue back; return how many
local function give_back(cid)
  local n = 0
  local h = B .. ':inflight:' .. cid
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    push_back(field_level(all[i]), all[i + 1], true)
    n = n + 1
  end
  if #all > 0 then redis.call('DEL', h) end
  local pk = B .. ':proc:' .. cid
  -- the processing list holds the oldest message at its right end, like the queue
  local items = redis.call('LRANGE', pk, 0, -1)
  for i = #items, 1, -1 do redis.call('RPUSH', B .. ':q', items[i]) end
  if #items > 0 then redis.call('DEL', pk) end
  return n + #items
end
-- give back the messages of up to max_consumers consumers silent for dead_after ms
local function recover_dead(now, dead_after, max_consumers)
  local ckey = B .. ':consumers'
  local dead = redis.call('ZRANGEBYSCORE', ckey, '-inf', now - dead_after, 'LIMIT', 0, max_consumers)
  local n = 0
  for _, cid in ipairs(dead) do
    n = n + give_back(cid)
    redis.call('ZREM', ckey, cid)
  end
  return n, #dead
end
-- ready levels of the queue, highest first, '0' in its place
local function levels_of()
  local lv = redis.call('ZREVRANGE', B .. ':levels', 0, -1)
  if #lv == 0 then return {'0'}, false end
  local levels, placed = {}, false
  for _, l in ipairs(lv) do
    if not placed and tonumber(l) < 0 then table.insert(levels, '0'); placed = true end
    table.insert(levels, l)
  end
  if not placed then table.insert(levels, '0') end
  return levels, true
end
"""

# Result records (callq_redis.results): ARGV[first] is the store's prefix, then runs of
# (count, ttl ms, final 0/1, id, record, id, record, ...). A record is a string with its TTL;
# a final one wakes the waiters of its call (see results.py), looked for only while the
# store-wide marker says someone waits at all. Keys outside KEYS: results are not supported
# on Redis Cluster.
PUT_RESULTS = r"""
local function put_results(first)
  if first > #ARGV then return 0 end
  local rp, i, n = ARGV[first] .. ':result:', first + 1, 0
  local watched = redis.call('EXISTS', ARGV[first] .. ':result-waiters') == 1
  while i <= #ARGV do
    local count, ttl, final = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2] == '1' and watched
    for j = i + 3, i + 1 + 2 * count, 2 do
      local key = rp .. ARGV[j]
      redis.call('SET', key, ARGV[j + 1], 'PX', ttl)
      if final and redis.call('EXISTS', key .. ':waiting') == 1 then
        redis.call('RPUSH', key .. ':wake', 1)
        redis.call('PEXPIRE', key .. ':wake', ttl)
      end
    end
    n = n + count
    i = i + 3 + 2 * count
  end
  return n
end
"""

# KEYS: q, levels, delayed, seq, consumers, inflight:C
# ARGV: base, consumer, max_n, seq_base, dead_after_ms, track (1: reliable, 0: fast), number of
# acks, ack field..., then result records to store (PUT_RESULTS; reliable mode only)
# Returns {ms_to_next_delayed, recovered, has_levels, fields, lengths, bodies}: three strings,
# not one reply element per message (the client parses a few elements, not 2n): the in-flight
# fields joined by spaces ('' in fast mode), the bodies' byte lengths joined by spaces, and the
# bodies concatenated.
CLAIM = COMMON + PUT_RESULTS + r"""
local cid, n = ARGV[2], tonumber(ARGV[3])
local seq, dead_after, track = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local h = B .. ':inflight:' .. cid
-- acks sent with this fetch: done before the claim, so in-flight stays bounded
local last_ack = 7 + tonumber(ARGV[7])
for i = 8, last_ack, 1000 do redis.call('HDEL', h, unpack(ARGV, i, math.min(i + 999, last_ack))) end
put_results(last_ack + 1)
local now = now_ms()
repair()
local recovered = 0
if track then
  redis.call('ZADD', B .. ':consumers', now, cid)
  recovered = recover_dead(now, dead_after, 1)
end
local next_due = promote(now)
local levels, has_levels = levels_of()
local fields, lengths, bodies = {}, {}, {}
local got = 0
for _, level in ipairs(levels) do
  if got >= n then break end
  local key = list_key(level)
  local items = redis.call('RPOP', key, n - got)
  while items do
    local args, woke = {}, false
    for _, body in ipairs(items) do
      if body == WAKE then
        woke = true
      else
        got = got + 1
        if track then
          local f = string.format('%d', seq + got) .. ':' .. level
          table.insert(args, f)
          table.insert(args, body)
          fields[got] = f
          if #args >= 2000 then redis.call('HSET', h, unpack(args)); args = {} end
        end
        lengths[got] = #body
        bodies[got] = body
      end
    end
    if #args > 0 then redis.call('HSET', h, unpack(args)) end
    items = false
    -- a wake-up marker took a place: take one more of this level
    if woke and got < n then items = redis.call('RPOP', key, n - got) end
  end
  if level ~= '0' and redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', B .. ':levels', level)
  end
end
return {next_due, recovered, has_levels and 1 or 0, table.concat(fields, ' '), table.concat(lengths, ' '),
        table.concat(bodies)}
"""

# KEYS: q, proc:C, delayed, seq, consumers
# ARGV: base, consumer, max_n, dead_after_ms
# Returns {ms_to_next_delayed, recovered, 0, body...}; bodies moved to B:proc:C
LMOVE_CLAIM = COMMON + r"""
local cid, n, dead_after = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
repair()
redis.call('ZADD', B .. ':consumers', now, cid)
local recovered = recover_dead(now, dead_after, 1)
local next_due = promote(now)
local src, pk = B .. ':q', B .. ':proc:' .. cid
local out = {next_due, recovered, 0}
for i = 1, n do
  local body = redis.call('LMOVE', src, pk, 'RIGHT', 'LEFT')
  if not body then break end
  if body == WAKE then redis.call('LPOP', pk) else table.insert(out, body) end
end
return out
"""

# KEYS: delayed, seq.  ARGV: base, level, delay_ms, body...
PUBLISH_DELAYED = COMMON + r"""
local level, delay = ARGV[2], tonumber(ARGV[3])
local due = now_ms() + delay
for i = 4, #ARGV do add_delayed(level, ARGV[i], due) end
return #ARGV - 3
"""

# KEYS: inflight:C, q, levels, delayed, seq.  ARGV: base, consumer, delay_ms, field...  (reliable)
REQUEUE = COMMON + r"""
local h, delay = B .. ':inflight:' .. ARGV[2], tonumber(ARGV[3])
local due = now_ms() + delay
local n = 0
for i = 4, #ARGV do
  local f = ARGV[i]
  local body = redis.call('HGET', h, f)
  if body then
    redis.call('HDEL', h, f)
    local level = field_level(f)
    if delay > 0 then add_delayed(level, body, due) else push_back(level, body, false) end
    n = n + 1
  end
end
return n
"""

# KEYS: proc:C, q, delayed, seq.  ARGV: base, consumer, delay_ms, body...   (lmove)
LMOVE_REQUEUE = COMMON + r"""
local pk, delay = B .. ':proc:' .. ARGV[2], tonumber(ARGV[3])
local due = now_ms() + delay
local n = 0
for i = 4, #ARGV do
  if redis.call('LREM', pk, -1, ARGV[i]) == 1 then
    if delay > 0 then add_delayed('0', ARGV[i], due) else push_back('0', ARGV[i], false) end
    n = n + 1
  end
end
return n
"""

# KEYS: consumers.  ARGV: base, consumer, dead_after_ms, register (1/0)
# Returns {recovered, dead consumers handled}
HEARTBEAT = COMMON + r"""
local now = now_ms()
if ARGV[4] == '1' then redis.call('ZADD', B .. ':consumers', now, ARGV[2]) end
local n, dead = recover_dead(now, tonumber(ARGV[3]), 50)
return {n, dead}
"""

# KEYS: consumers, inflight:C, proc:C, q.  ARGV: base, consumer.
# Gives back everything the consumer holds on this queue and forgets it there.
RELEASE = COMMON + r"""
local n = give_back(ARGV[2])
redis.call('ZREM', B .. ':consumers', ARGV[2])
return n
"""

# KEYS: inflight:C, q.  ARGV: base, consumer, field...   Gives back the listed fields
# (orphans of a lost reply).
RELEASE_FIELDS = COMMON + r"""
local h = B .. ':inflight:' .. ARGV[2]
local n = 0
for i = 3, #ARGV do
  local f = ARGV[i]
  local body = redis.call('HGET', h, f)
  if body then
    redis.call('HDEL', h, f)
    push_back(field_level(f), body, true)
    n = n + 1
  end
end
return n
"""

# KEYS: q, levels, delayed.  ARGV: base.  Waiting messages: every level plus delayed.
SIZE = COMMON + r"""
local n = redis.call('ZCARD', B .. ':delayed')
for _, level in ipairs(levels_of()) do n = n + redis.call('LLEN', list_key(level)) end
return n - wake_in(list_key('0'))
"""

# KEYS: q, levels, delayed.  ARGV: base.  Deletes waiting messages; returns how many.
PURGE = COMMON + r"""
local n = redis.call('ZCARD', B .. ':delayed')
for _, level in ipairs(levels_of()) do
  local key = list_key(level)
  n = n + redis.call('LLEN', key)
  if level == '0' then n = n - wake_in(key) end
  redis.call('DEL', key)
end
redis.call('DEL', B .. ':delayed', B .. ':levels')
return n
"""
