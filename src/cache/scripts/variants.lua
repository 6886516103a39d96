-- The live variants of one URL stored with a strong ETag, for a 304 that
-- freshens every response its validator selects (RFC 9111 §4.3.4): only
-- the matching entries are read.
-- KEYS[1] the URL's index (hash, see lookup.lua; t:<variant> = the strong
-- ETag of that variant's entry, when it has one), KEYS[2] the entry key
-- and KEYS[3] the soft-purged copy of a URL without Vary (see lookup.lua)
-- ARGV[1] the strong ETag
-- Returns {now ms, the stored spec or false, generation ('0': none), then
-- for each match its variant and entry}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = KEYS[1]
local head = redis.call('HMGET', index, 'vary', 'g')
local out = {now, head[1] or false, head[2] or '0'}
local names = {}
for _, f in ipairs(redis.call('HKEYS', index)) do
  if string.sub(f, 1, 2) == 't:' then table.insert(names, f) end
end
for first = 1, #names, 1000 do
  local last = math.min(first + 999, #names)
  local tags = redis.call('HMGET', index, unpack(names, first, last))
  for j = first, last do
    if tags[j - first + 1] == ARGV[1] then
      local v = string.sub(names[j], 3)
      local got = redis.call('HMGET', index, 'x:' .. v, 'e:' .. v)
      local entry = got[2]
      if not entry and head[1] == '' then
        entry = redis.call('GET', KEYS[2]) or redis.call('GET', KEYS[3])
      end
      if entry and now < (tonumber(got[1]) or 0) then
        table.insert(out, v)
        table.insert(out, entry)
      end
    end
  end
end
return out
