-- Takes or renews a node's lease, claiming a worker id for a new node.
-- ARGV: prefix, max worker, node, ws, http, started, default lease, preferred worker or ''
-- -> {worker, lease}.
local node = ARGV[3]
local nk = P .. 'n:' .. node
local now = now_ms()
local lease = tonumber(redis.call('HGET', P .. 'cfg', 'lease_ms') or ARGV[7])
local worker = redis.call('HGET', nk, 'worker')
if worker then
  redis.call('HSET', nk, 'ws', ARGV[4], 'http', ARGV[5], 'started', ARGV[6], 'hb', now,
    'lease', lease)
  redis.call('ZADD', P .. 'alive', now + lease, node)
  return {tonumber(worker), lease}
end
local w = claim_worker(ARGV[8])
if not w then
  return redis.error_reply('ERR no free worker id')
end
redis.call('HSET', nk, 'ws', ARGV[4], 'http', ARGV[5], 'started', ARGV[6], 'state', 'live',
  'worker', w, 'conns', 0, 'resv', 0, 'hb', now, 'lease', lease)
redis.call('ZADD', P .. 'alive', now + lease, node)
redis.call('ZADD', P .. 'load', 0, node)
return {w, lease}
