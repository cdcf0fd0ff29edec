-- Marks a node live or draining (a draining node leaves `load`).
-- ARGV: prefix, node, state -> 1, or 0 for an unknown node.
local nk = P .. 'n:' .. ARGV[2]
if redis.call('EXISTS', nk) == 0 then
  return 0
end
redis.call('HSET', nk, 'state', ARGV[3])
reindex(ARGV[2])
return 1
