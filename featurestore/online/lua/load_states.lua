local out = {}
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 's', 'o', 'i')
  out[3 * i - 2] = r[1] or false
  out[3 * i - 1] = r[2] or false
  out[3 * i] = r[3] or false
end
return out
