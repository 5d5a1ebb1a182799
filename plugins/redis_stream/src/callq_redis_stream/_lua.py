"""Lua scripts of the Streams broker. Each runs atomically inside Redis.

Every script gets the stream as KEYS[1] (which routes it to the stream's shard on a cluster).
"""

from callq_redis._lua import PUT_RESULTS

# KEYS: stream.  ARGV: group, consumer, min_idle_ms, count.  Re-adds entries idle past
# min_idle at the end of the stream (whole PEL scanned by cursor, up to 20 rounds); returns how many.
RECLAIM = r"""
local key, group, cid = KEYS[1], ARGV[1], ARGV[2]
local cursor, n, rounds = '0-0', 0, 0
repeat
  local res = redis.call('XAUTOCLAIM', key, group, cid, ARGV[3], cursor, 'COUNT', ARGV[4])
  cursor = res[1]
  for _, e in ipairs(res[2]) do
    if e then
      if e[2] then
        redis.call('XADD', key, '*', unpack(e[2]))
        n = n + 1
      end
      redis.call('XACK', key, group, e[1])
      redis.call('XDEL', key, e[1])
    end
  end
  rounds = rounds + 1
until cursor == '0-0' or rounds >= 20
return n
"""

# KEYS: stream.  ARGV: group, consumer, count, number of ids, id..., then result records
# (callq_redis's PUT_RESULTS).  Acks and deletes the ids, stores the records, then reads up to
# count new entries without blocking (none if count is 0); replies {'id id ...', body, body...}
# (ids in one string: a reply element costs more Python to parse than a split), body false for an
# entry that is not callq's (not one field 'b').
ACK_READ = PUT_RESULTS + r"""
local last_ack = 4 + tonumber(ARGV[4])
if last_ack > 4 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 5, last_ack))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 5, last_ack))
end
put_results(last_ack + 1)
if ARGV[3] == '0' then return {} end
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not res then return {} end
local ids, out = {}, {''}
for i, e in ipairs(res[1][2]) do
  local f = e[2]
  ids[i] = e[1]
  if f and #f == 2 and f[1] == 'b' then out[i + 1] = f[2] else out[i + 1] = false end
end
out[1] = table.concat(ids, ' ')
return out
"""

# KEYS: stream.  ARGV: group, id...  Puts entries still pending back at the end of the stream.
GIVE_BACK = r"""
local key, group = KEYS[1], ARGV[1]
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('XACK', key, group, id) == 1 then
    local e = redis.call('XRANGE', key, id, id)
    if #e > 0 then
      redis.call('XADD', key, '*', unpack(e[1][2]))
      n = n + 1
    end
  end
  redis.call('XDEL', key, id)
end
return n
"""

# KEYS: stream.  ARGV: group, consumer.  Gives back everything the consumer holds, then deletes it.
RELEASE = r"""
local key, group, cid = KEYS[1], ARGV[1], ARGV[2]
local n = 0
local ok = redis.pcall('XPENDING', key, group, '-', '+', 1, cid)
if type(ok) == 'table' and ok.err then return 0 end
while true do
  local pend = redis.call('XPENDING', key, group, '-', '+', 500, cid)
  if #pend == 0 then break end
  for _, p in ipairs(pend) do
    local id = p[1]
    redis.call('XACK', key, group, id)
    local e = redis.call('XRANGE', key, id, id)
    if #e > 0 then
      redis.call('XADD', key, '*', unpack(e[1][2]))
      n = n + 1
    end
    redis.call('XDEL', key, id)
  end
end
redis.call('XGROUP', 'DELCONSUMER', key, group, cid)
return n
"""

# KEYS: stream.  ARGV: group, consumer.  Deletes the consumer only if it holds nothing.
DROP_IF_EMPTY = r"""
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

# KEYS: stream.  A key of another type where the stream belongs (written by other code)
# becomes a stream holding one entry: its content as a JSON array, which the worker dead-letters.
REPAIR = r"""
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t == 'stream' or t == 'none' then return 0 end
local content
if t == 'string' then content = redis.call('GET', key)
elseif t == 'hash' then content = redis.call('HGETALL', key)
elseif t == 'set' then content = redis.call('SMEMBERS', key)
elseif t == 'zset' then content = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
elseif t == 'list' then content = redis.call('LRANGE', key, 0, -1)
else content = t end
redis.call('DEL', key)
redis.call('XADD', key, '*', 'b', cjson.encode({'redis key ' .. key .. ' is a ' .. t .. ', callq expected a stream', content}))
return 1
"""

# KEYS: stream.  ARGV: group.  Waiting = entries in the stream minus those pending (acked ones are deleted).
SIZE = r"""
local len = redis.call('XLEN', KEYS[1])
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(pend) == 'table' and not pend.err then len = len - tonumber(pend[1]) end
if len < 0 then return 0 end
return len
"""

# KEYS: stream.  ARGV: group.  Deletes the entries not yet delivered to the group.
PURGE = r"""
local key, group = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local last = nil
local groups = redis.call('XINFO', 'GROUPS', key)
for _, g in ipairs(groups) do
  local name, lid = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == group then last = lid end
end
local start = '-'
if last then start = '(' .. last end
local n = 0
while true do
  local entries = redis.call('XRANGE', key, start, '+', 'COUNT', 1000)
  if #entries == 0 then break end
  local ids = {}
  for _, e in ipairs(entries) do table.insert(ids, e[1]) end
  redis.call('XDEL', key, unpack(ids))
  n = n + #ids
  start = '(' .. ids[#ids]
end
return n
"""
