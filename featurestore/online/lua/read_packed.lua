local t = ARGV[1]
local out, states = {}, {}
local m = 0
for i = 1, #KEYS do
  local r = redis.call('HGET', KEYS[i], 'v')
  if r and string.byte(r, 1) == 91 then
    local x = redis.call('HMGET', KEYS[i], 'w', 'u')
    local u = tonumber(x[2])
    local upto = u < 0 and '9999999999999999' or string.format('%016.0f', u + 1e15)
    r = upto .. string.format('%016.0f', tonumber(x[1]) + 1e15) .. r
  end
  out[i] = r or false
  if r and string.sub(r, 1, 16) <= t then
    states[m + 1] = i - 1
    states[m + 2] = redis.call('HGET', KEYS[i], 's') or false
    m = m + 2
  end
end
return {out, states}
