-- Removes nodes whose lease lapsed and controllers whose claim did, and expired
-- reservations; each dead node is returned by exactly one call.
-- ARGV: prefix -> a list of removed nodes as deregister.lua returns them.
local now = now_ms()
expire_reservations(now, 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGE', P .. 'alive', '-inf', now - 1, 'BYSCORE', 'LIMIT', 0, 100)) do
  local r = remove(node)
  if r then
    out[#out + 1] = r
  end
end
for _, owner in ipairs(redis.call('ZRANGE', P .. 'ctl', '-inf', now - 1, 'BYSCORE', 'LIMIT', 0, 100)) do
  release_controller(owner)
end
return out
