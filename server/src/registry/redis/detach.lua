-- A device of a user left a node.
-- ARGV: prefix, node, user -> 1 if the user is now offline.
local node, user = ARGV[2], ARGV[3]
local nk = P .. 'n:' .. node
local uk = P .. 'u:' .. user
if redis.call('EXISTS', nk) == 0 then
  -- Already reaped: its devices were forgotten with it.
  if redis.call('EXISTS', uk) == 0 then
    return 1
  end
  return 0
end
if tonumber(redis.call('HGET', nk, 'conns')) > 0 then
  redis.call('HINCRBY', nk, 'conns', -1)
end
local last = 0
if redis.call('EXISTS', uk) == 1 then
  local here = redis.call('HGET', uk, node)
  if here then
    if tonumber(here) <= 1 then
      redis.call('HDEL', uk, node)
      redis.call('SREM', P .. 'nu:' .. node, user)
    else
      redis.call('HINCRBY', uk, node, -1)
    end
  end
  if redis.call('EXISTS', uk) == 0 then
    last = 1
  end
end
reindex(node)
return last
