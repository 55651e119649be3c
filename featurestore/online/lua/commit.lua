if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
local i = 5
for p = 1, n do
  if ARGV[i + 1] ~= '*' then  -- '*': the owner only (Redis Cluster: the offsets live in another slot group)
    local cur = redis.call('HGET', KEYS[1], ARGV[i])
    if (cur or '-1') ~= ARGV[i + 1] then return 0 end
  end
  if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], ARGV[i]) ~= ARGV[4] then return 0 end
  i = i + 3
end
local j = i
for k = 4, #KEYS do  -- each state as its writer last saw it stored ('*': not checked)
  local want = ARGV[j + 5]
  if want ~= '*' and (redis.call('HGET', KEYS[k], 'o') or '') ~= want then return -2 end
  j = j + 6
end
if ARGV[3] == '1' then
  i = 5
  for p = 1, n do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    i = i + 3
  end
end
for k = 4, #KEYS do
  local ids = ARGV[i + 4]
  if string.byte(ids, 1) == 38 then  -- '&': binary (hash, ts) pairs to append (transforms.engine.codec)
    if #ids == 1 then
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3])
    else
      local cur = redis.call('HGET', KEYS[k], 'i')
      if cur and #cur > 0 then ids = cur .. string.sub(ids, 2) else ids = '=' .. string.sub(ids, 2) end
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3], 'i', ids)
    end
  elseif string.byte(ids, 1) == 43 then  -- '+': JSON pairs to append (format 2 writers)
    if #ids == 1 then
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3])
    else
      local cur = redis.call('HGET', KEYS[k], 'i')
      if cur and #cur > 0 then ids = cur .. ',' .. string.sub(ids, 2) else ids = string.sub(ids, 2) end
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3], 'i', ids)
    end
  else
    redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3], 'i', ids)
  end
  local ttl = tonumber(ARGV[i + 2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) else redis.call('PERSIST', KEYS[k]) end
  i = i + 6
end
return 1
