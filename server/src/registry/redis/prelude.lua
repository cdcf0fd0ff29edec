-- Helpers every script starts with (the scripts are this file followed by their own).
-- `P` is the key prefix, always ARGV[1]. Time is Redis's (`TIME`), for every caller alike.
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reindex(node)
  local v = redis.call('HMGET', P .. 'n:' .. node, 'state', 'conns', 'resv')
  if v[1] == 'live' then
    redis.call('ZADD', P .. 'load', tonumber(v[2]) + tonumber(v[3]), node)
  else
    redis.call('ZREM', P .. 'load', node)
  end
end
local function forget_reservation(tok, node)
  redis.call('ZREM', P .. 'res', tok)
  redis.call('HDEL', P .. 'resn', tok)
  redis.call('SREM', P .. 'nr:' .. node, tok)
end
local function release_slot(node)
  local nk = P .. 'n:' .. node
  if tonumber(redis.call('HGET', nk, 'resv') or '0') > 0 then
    redis.call('HINCRBY', nk, 'resv', -1)
    reindex(node)
  end
end
local function expire_reservations(now, limit)
  local toks = redis.call('ZRANGE', P .. 'res', '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, tok in ipairs(toks) do
    local node = redis.call('HGET', P .. 'resn', tok)
    if node then
      forget_reservation(tok, node)
      release_slot(node)
    else
      redis.call('ZREM', P .. 'res', tok)
    end
  end
end
-- The preferred id (the one the caller had before Redis forgot it) if free, else the lowest.
local function claim_worker(preferred)
  if preferred and preferred ~= '' and redis.call('GETBIT', P .. 'workers', preferred) == 0 then
    redis.call('SETBIT', P .. 'workers', preferred, 1)
    return tonumber(preferred)
  end
  local w = redis.call('BITPOS', P .. 'workers', 0)
  if w < 0 or w > tonumber(ARGV[2]) then
    return nil
  end
  redis.call('SETBIT', P .. 'workers', w, 1)
  return w
end
local function release_controller(owner)
  local w = redis.call('HGET', P .. 'ctlw', owner)
  if w then
    redis.call('SETBIT', P .. 'workers', tonumber(w), 0)
    redis.call('HDEL', P .. 'ctlw', owner)
  end
  redis.call('ZREM', P .. 'ctl', owner)
end
-- Removes a node with its devices and reservations; nil if it holds no lease.
-- Returns {node, last heartbeat, unpublished since or '', users now offline...}.
local function remove(node)
  local nk = P .. 'n:' .. node
  local v = redis.call('HMGET', nk, 'worker', 'hb', 'unpub')
  if not v[1] then
    return nil
  end
  local out = {node, v[2], v[3] or ''}
  local nu = P .. 'nu:' .. node
  for _, u in ipairs(redis.call('SMEMBERS', nu)) do
    local uk = P .. 'u:' .. u
    redis.call('HDEL', uk, node)
    if redis.call('EXISTS', uk) == 0 then
      out[#out + 1] = u
    end
  end
  local nr = P .. 'nr:' .. node
  for _, tok in ipairs(redis.call('SMEMBERS', nr)) do
    redis.call('ZREM', P .. 'res', tok)
    redis.call('HDEL', P .. 'resn', tok)
  end
  redis.call('DEL', nk, nu, nr)
  redis.call('ZREM', P .. 'alive', node)
  redis.call('ZREM', P .. 'load', node)
  redis.call('SETBIT', P .. 'workers', tonumber(v[1]), 0)
  return out
end
