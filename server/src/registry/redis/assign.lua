-- The least-loaded live node not excluded, with a slot reserved on it: walks `load` from
-- the lowest score, skipping only excluded and lapsed nodes.
-- ARGV: prefix, token, reservation ms, excluded nodes... -> {node, ws, expires} or nil.
local tok, hold = ARGV[2], tonumber(ARGV[3])
local excluded = {}
for i = 4, #ARGV do
  excluded[ARGV[i]] = true
end
local now = now_ms()
expire_reservations(now, 100)
local from, step = 0, 16
while true do
  local batch = redis.call('ZRANGE', P .. 'load', from, from + step - 1)
  if #batch == 0 then
    return false
  end
  for _, node in ipairs(batch) do
    if not excluded[node] then
      local expiry = redis.call('ZSCORE', P .. 'alive', node)
      if expiry and tonumber(expiry) >= now then
        local nk = P .. 'n:' .. node
        redis.call('HINCRBY', nk, 'resv', 1)
        redis.call('ZINCRBY', P .. 'load', 1, node)
        local expires = now + hold
        redis.call('ZADD', P .. 'res', expires, tok)
        redis.call('HSET', P .. 'resn', tok, node)
        redis.call('SADD', P .. 'nr:' .. node, tok)
        return {node, redis.call('HGET', nk, 'ws'), expires}
      end
    end
  end
  from = from + step
end
