-- KEYS[1] the value, KEYS[2] its generation; ARGV: generation seen by the read, TTL, value.
-- Run by travel/cache.py.
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
    return 1
end
return 0
