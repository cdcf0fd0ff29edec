-- A device of a user connected on a node, using its reservation if it had one.
-- ARGV: prefix, node, user, reservation or '' -> 1 if the user was offline, 0 if not, -1 for
-- an unknown node.
local node, user, tok = ARGV[2], ARGV[3], ARGV[4]
local nk = P .. 'n:' .. node
if redis.call('EXISTS', nk) == 0 then
  return -1
end
if tok ~= '' and redis.call('HGET', P .. 'resn', tok) == node then
  forget_reservation(tok, node)
  if tonumber(redis.call('HGET', nk, 'resv')) > 0 then
    redis.call('HINCRBY', nk, 'resv', -1)
  end
end
redis.call('HINCRBY', nk, 'conns', 1)
local uk = P .. 'u:' .. user
local first = redis.call('EXISTS', uk) == 0
redis.call('HINCRBY', uk, node, 1)
redis.call('SADD', P .. 'nu:' .. node, user)
reindex(node)
if first then
  return 1
end
return 0
