-- KEYS[1]: the generation sequence, then pairs of (value, its generation); ARGV[1]: how long
-- a generation is remembered. Generations come from one sequence, so a generation that
-- expired and is set again never repeats the value a slow read saw.
-- Run by travel/cache.py and go/cache.go (one file, so one SHA for both).
local generation = redis.call('INCR', KEYS[1])
for i = 2, #KEYS, 2 do
    redis.call('SET', KEYS[i + 1], generation, 'EX', ARGV[1])
    redis.call('DEL', KEYS[i])
end
return generation
