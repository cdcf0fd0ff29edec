-- Takes or renews a controller's worker id: the one it had, or a new one if its claim
-- lapsed. The lease is also the cluster's node lease.
-- ARGV: prefix, max worker, owner, lease ms, preferred worker or '' -> the worker id.
local owner = ARGV[3]
local w = redis.call('HGET', P .. 'ctlw', owner)
if w then
  w = tonumber(w)
else
  w = claim_worker(ARGV[5])
  if not w then
    return redis.error_reply('ERR no free worker id')
  end
  redis.call('HSET', P .. 'ctlw', owner, w)
end
redis.call('ZADD', P .. 'ctl', now_ms() + tonumber(ARGV[4]), owner)
-- The controller's lease is the cluster's: said again with every renewal, so that a Redis
-- that lost its data (restarted without persistence) learns it back.
redis.call('HSET', P .. 'cfg', 'lease_ms', ARGV[4])
return w
