"""Lua scripts of the list broker. Each runs atomically inside Redis.

Keys (``P`` is the URL's ``prefix``; ``Q`` a queue name; ``L`` a priority level; ``C`` a consumer id):

* ``P:q:Q``          ready list of priority 0 (LPUSH to publish, RPOP to fetch: FIFO)
* ``P:qpL:Q``        ready list of priority level ``L`` (non-zero)
* ``P:levels:Q``     zset of the non-zero levels that may hold messages (score = level)
* ``P:delayed:Q``    zset of delayed messages, score = due time (Redis server ms);
                     member = 16 hex digits (unique) ``:`` level ``:`` body
* ``P:consumers``    zset consumer id -> last heartbeat (Redis server ms)
* ``P:inflight:C``   hash of a reliable-mode consumer's unacked messages;
                     field = ``seq:level:queue``, value = body
* ``P:proc:C:Q``     lmove-mode processing list of consumer ``C`` for queue ``Q``
* ``P:procs:C``      set of the queues consumer ``C`` has processing lists for
* ``P:seq``          counter for unique delayed-member prefixes

``WAKE`` (below) is pushed to an empty ready list when a delayed message becomes the next one
due, so fetches blocked on the list wake and shorten their wait to its due time; claims drop it.
A key of another type where callq expects its list or zset (written by other code) is replaced
by a message holding its content as a JSON array: core dead-letters it instead of every fetch
failing with WRONGTYPE.

Keys are computed inside the scripts, so the broker needs a standalone Redis (not Cluster).
Times come from the Redis server (``TIME``), so clients' clocks do not matter.
"""

WAKE = "\x00callq:wake"

COMMON = r"""
local P = ARGV[1]
local WAKE = '\0callq:wake'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function list_key(queue, level)
  if level == '0' then return P .. ':q:' .. queue end
  return P .. ':qp' .. level .. ':' .. queue
end
-- front: delivered next (recovered messages); otherwise at the end of the queue
local function push_back(queue, level, body, front)
  local key = list_key(queue, level)
  if front then redis.call('RPUSH', key, body) else redis.call('LPUSH', key, body) end
  if level ~= '0' then redis.call('ZADD', P .. ':levels:' .. queue, tonumber(level), level) end
end
local function add_delayed(queue, level, body, due)
  local dkey = P .. ':delayed:' .. queue
  local head = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  local uniq = string.format('%016x', redis.call('INCR', P .. ':seq'))
  redis.call('ZADD', dkey, due, uniq .. ':' .. level .. ':' .. body)
  -- due before every other delayed message: wake fetches blocked on the empty list
  if (#head == 0 or tonumber(head[2]) > due) and redis.call('LLEN', P .. ':q:' .. queue) == 0 then
    redis.call('LPUSH', P .. ':q:' .. queue, WAKE)
  end
end
-- 1 if the ready list of level 0 holds a wake-up marker (it sits near its oldest end)
local function wake_in(key)
  if redis.call('LPOS', key, WAKE, 'RANK', -1, 'MAXLEN', 1000) then return 1 end
  return 0
end
-- a key of the wrong type (written by other code) becomes a message holding its content
local function repair(queue)
  local qkey = P .. ':q:' .. queue
  local want = {{qkey, 'list'}, {P .. ':delayed:' .. queue, 'zset'}, {P .. ':levels:' .. queue, 'zset'}}
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
local function promote(queue, now)
  local dkey = P .. ':delayed:' .. queue
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 1000)
  for i = 1, #due do
    local m = due[i]
    local sep = string.find(m, ':', 18, true)
    push_back(queue, string.sub(m, 18, sep - 1), string.sub(m, sep + 1), false)
  end
  if #due > 0 then redis.call('ZREM', dkey, unpack(due)) end
  local nxt = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  if #nxt == 0 then return -1 end
  return math.max(0, tonumber(nxt[2]) - now)
end
-- put every unacked message of consumer cid back; return how many
local function give_back(cid)
  local n = 0
  local h = P .. ':inflight:' .. cid
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    local f = all[i]
    local a = string.find(f, ':', 1, true)
    local b = string.find(f, ':', a + 1, true)
    push_back(string.sub(f, b + 1), string.sub(f, a + 1, b - 1), all[i + 1], true)
    n = n + 1
  end
  if #all > 0 then redis.call('DEL', h) end
  local s = P .. ':procs:' .. cid
  local queues = redis.call('SMEMBERS', s)
  for _, q in ipairs(queues) do
    local pk = P .. ':proc:' .. cid .. ':' .. q
    -- the processing list holds the oldest message at its right end, like the queue
    local items = redis.call('LRANGE', pk, 0, -1)
    for i = #items, 1, -1 do redis.call('RPUSH', P .. ':q:' .. q, items[i]) end
    n = n + #items
    redis.call('DEL', pk)
  end
  if #queues > 0 then redis.call('DEL', s) end
  return n
end
-- give back the messages of up to max_consumers consumers silent for dead_after ms
local function recover_dead(now, dead_after, max_consumers)
  local ckey = P .. ':consumers'
  local dead = redis.call('ZRANGEBYSCORE', ckey, '-inf', now - dead_after, 'LIMIT', 0, max_consumers)
  local n = 0
  for _, cid in ipairs(dead) do
    n = n + give_back(cid)
    redis.call('ZREM', ckey, cid)
  end
  return n, #dead
end
-- ready levels of a queue, highest first, '0' in its place
local function levels_of(queue)
  local lv = redis.call('ZREVRANGE', P .. ':levels:' .. queue, 0, -1)
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

# ARGV: prefix, queue, consumer, max_n, seq_base, dead_after_ms, track (1: reliable, 0: fast)
# Returns {ms_to_next_delayed, recovered, has_levels, [field, body]... (track) | [body]... (fast)}
CLAIM = COMMON + r"""
local queue, cid, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local seq, dead_after, track = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local now = now_ms()
repair(queue)
local recovered = 0
if track then
  redis.call('ZADD', P .. ':consumers', now, cid)
  recovered = recover_dead(now, dead_after, 1)
end
local next_due = promote(queue, now)
local levels, has_levels = levels_of(queue)
local out = {next_due, recovered, has_levels and 1 or 0}
local h = P .. ':inflight:' .. cid
local got = 0
for _, level in ipairs(levels) do
  if got >= n then break end
  local key = list_key(queue, level)
  local items = redis.call('RPOP', key, n - got)
  while items do
    local args, woke = {}, false
    for _, body in ipairs(items) do
      if body == WAKE then
        woke = true
      else
        got = got + 1
        if track then
          local f = string.format('%d', seq + got) .. ':' .. level .. ':' .. queue
          table.insert(args, f)
          table.insert(args, body)
          table.insert(out, f)
          if #args >= 2000 then redis.call('HSET', h, unpack(args)); args = {} end
        end
        table.insert(out, body)
      end
    end
    if #args > 0 then redis.call('HSET', h, unpack(args)) end
    items = false
    -- a wake-up marker took a place: take one more of this level
    if woke and got < n then items = redis.call('RPOP', key, n - got) end
  end
  if level ~= '0' and redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', P .. ':levels:' .. queue, level)
  end
end
return out
"""

# ARGV: prefix, queue, consumer, max_n, dead_after_ms
# Returns {ms_to_next_delayed, recovered, 0, body...}; bodies moved to P:proc:C:Q
LMOVE_CLAIM = COMMON + r"""
local queue, cid, n, dead_after = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
repair(queue)
redis.call('ZADD', P .. ':consumers', now, cid)
local recovered = recover_dead(now, dead_after, 1)
local next_due = promote(queue, now)
redis.call('SADD', P .. ':procs:' .. cid, queue)
local src, pk = P .. ':q:' .. queue, P .. ':proc:' .. cid .. ':' .. queue
local out = {next_due, recovered, 0}
for i = 1, n do
  local body = redis.call('LMOVE', src, pk, 'RIGHT', 'LEFT')
  if not body then break end
  if body == WAKE then redis.call('LPOP', pk) else table.insert(out, body) end
end
return out
"""

# ARGV: prefix, queue, level, delay_ms, body...
PUBLISH_DELAYED = COMMON + r"""
local queue, level, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
local due = now_ms() + delay
for i = 5, #ARGV do add_delayed(queue, level, ARGV[i], due) end
return #ARGV - 4
"""

# ARGV: prefix, consumer, delay_ms, field...   (reliable mode)
REQUEUE = COMMON + r"""
local h, delay = P .. ':inflight:' .. ARGV[2], tonumber(ARGV[3])
local due = now_ms() + delay
local n = 0
for i = 4, #ARGV do
  local f = ARGV[i]
  local body = redis.call('HGET', h, f)
  if body then
    redis.call('HDEL', h, f)
    local a = string.find(f, ':', 1, true)
    local b = string.find(f, ':', a + 1, true)
    local level, queue = string.sub(f, a + 1, b - 1), string.sub(f, b + 1)
    if delay > 0 then add_delayed(queue, level, body, due) else push_back(queue, level, body, false) end
    n = n + 1
  end
end
return n
"""

# ARGV: prefix, consumer, queue, delay_ms, body...   (lmove mode)
LMOVE_REQUEUE = COMMON + r"""
local cid, queue, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
local pk = P .. ':proc:' .. cid .. ':' .. queue
local due = now_ms() + delay
local n = 0
for i = 5, #ARGV do
  if redis.call('LREM', pk, -1, ARGV[i]) == 1 then
    if delay > 0 then add_delayed(queue, '0', ARGV[i], due) else push_back(queue, '0', ARGV[i], false) end
    n = n + 1
  end
end
return n
"""

# ARGV: prefix, consumer, dead_after_ms, register (1/0)
# Returns {recovered, dead consumers handled}
HEARTBEAT = COMMON + r"""
local now = now_ms()
if ARGV[4] == '1' then redis.call('ZADD', P .. ':consumers', now, ARGV[2]) end
local n, dead = recover_dead(now, tonumber(ARGV[3]), 50)
return {n, dead}
"""

# ARGV: prefix, consumer.  Gives back everything the consumer holds and forgets it.
RELEASE = COMMON + r"""
local n = give_back(ARGV[2])
redis.call('ZREM', P .. ':consumers', ARGV[2])
return n
"""

# ARGV: prefix, consumer, field...   Gives back the listed fields (orphans of a lost reply).
RELEASE_FIELDS = COMMON + r"""
local h = P .. ':inflight:' .. ARGV[2]
local n = 0
for i = 3, #ARGV do
  local f = ARGV[i]
  local body = redis.call('HGET', h, f)
  if body then
    redis.call('HDEL', h, f)
    local a = string.find(f, ':', 1, true)
    local b = string.find(f, ':', a + 1, true)
    push_back(string.sub(f, b + 1), string.sub(f, a + 1, b - 1), body, true)
    n = n + 1
  end
end
return n
"""

# ARGV: prefix, queue.  Waiting messages: every level plus delayed.
SIZE = COMMON + r"""
local queue = ARGV[2]
local levels = levels_of(queue)
local n = redis.call('ZCARD', P .. ':delayed:' .. queue)
for _, level in ipairs(levels) do n = n + redis.call('LLEN', list_key(queue, level)) end
return n - wake_in(list_key(queue, '0'))
"""

# ARGV: prefix, queue.  Deletes waiting messages (every level plus delayed); returns how many.
PURGE = COMMON + r"""
local queue = ARGV[2]
local levels = levels_of(queue)
local n = redis.call('ZCARD', P .. ':delayed:' .. queue)
for _, level in ipairs(levels) do
  local key = list_key(queue, level)
  n = n + redis.call('LLEN', key)
  if level == '0' then n = n - wake_in(key) end
  redis.call('DEL', key)
end
redis.call('DEL', P .. ':delayed:' .. queue, P .. ':levels:' .. queue)
return n
"""
