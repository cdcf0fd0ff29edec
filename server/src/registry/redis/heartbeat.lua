-- Renews a node's lease, sets its connection count and unpublished time, and gives
-- expired reservations back.
-- ARGV: prefix, node, connections, unpublished since or '' -> 1, or 0 for an unknown node.
local node = ARGV[2]
local nk = P .. 'n:' .. node
local lease = redis.call('HGET', nk, 'lease')
if not lease then
  return 0
end
local now = now_ms()
redis.call('HSET', nk, 'conns', ARGV[3], 'hb', now)
if ARGV[4] == '' then
  redis.call('HDEL', nk, 'unpub')
else
  redis.call('HSET', nk, 'unpub', ARGV[4])
end
redis.call('ZADD', P .. 'alive', now + tonumber(lease), node)
reindex(node)
expire_reservations(now, 100)
return 1
