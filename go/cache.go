package main

// The Redis side, interoperable with the Python service's cache (cache.py, cachekeys.py):
// the same key names and TTLs, values stored as the plain JSON bytes of the answer (none of
// the keys served here belongs to a shared-generation family, whose values Python stores
// tagged), and the same cache epoch: a key is named "e{N}:<key>" once the epoch N > 0.
//
// A write invalidates as cache.py's invalidate does, with the same script: bump each key's
// generation and DEL it, in one round trip. A plain DEL would not do: a Python miss that read
// PostgreSQL before the write committed fills only if the key's generation is unchanged, and
// only a bumped generation tells it the row it holds is stale.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// TTLs and key names: cachekeys.py.
const (
	ttlTrip         = 300
	ttlTripsTotal   = 300
	ttlRevenueTotal = 60
	ttlCardBalance  = 300
	generationTTL   = 600 // cachekeys.GENERATION_TTL
)

func keyTrip(id int64) string        { return "trip:" + strconv.FormatInt(id, 10) }
func keyCardBalance(id int64) string { return "card:" + strconv.FormatInt(id, 10) + ":balance" }
func keyCardTrips(id int64) string   { return "trips:card:" + strconv.FormatInt(id, 10) }
func keyUserRecharges(id int64) string {
	return "user:" + strconv.FormatInt(id, 10) + ":recharges"
}

const (
	keyTripsTotal        = "trips:total"
	keyTripsByLocality   = "trips:total:localities"
	keyRevenueTotal      = "finance:total_revenue"
	keyRevenueByLocality = "finance:revenue:by_localities"
	keyTripsHourlyFamily = "trips:hourly" // the one generation of trips:hourly:{N}
	generationSequence   = "gen:sequence"
	generationPrefix     = "gen:"
)

// cachekeys.after_recharge and after_boarding.
func afterRecharge(cardID, userID int64) []string {
	return []string{keyCardBalance(cardID), keyUserRecharges(userID)}
}

func afterBoarding(cardID int64) []string {
	return []string{
		keyCardBalance(cardID), keyCardTrips(cardID),
		keyTripsTotal, keyTripsByLocality, keyRevenueTotal, keyRevenueByLocality, keyTripsHourlyFamily,
	}
}

// bumpAndDelete is the invalidation script that cache.py runs too: the repository's
// sql/redis/bump-and-delete.lua, read at start by loadScripts (one file, so both share one SHA).
var bumpAndDelete *redis.Script

// loadScripts reads the Lua scripts of dir (the repository's sql/redis) that this server runs.
func loadScripts(dir string) error {
	text, err := os.ReadFile(filepath.Join(dir, "bump-and-delete.lua"))
	if err != nil {
		return err
	}
	bumpAndDelete = redis.NewScript(-1, string(text))
	return nil
}

type cache struct {
	pool  *redis.Pool
	epoch atomic.Int64 // the cache epoch: read at start, then kept by the listener
}

func newCache(url string) *cache {
	const timeout = 100 * time.Millisecond // Redis is an optimisation: never wait long for it
	pool := &redis.Pool{
		MaxIdle:     64,
		MaxActive:   64,
		Wait:        true,
		IdleTimeout: 60 * time.Second,
		Dial: func() (redis.Conn, error) {
			return redis.DialURL(url,
				redis.DialConnectTimeout(timeout),
				redis.DialReadTimeout(timeout),
				redis.DialWriteTimeout(timeout))
		},
	}
	return &cache{pool: pool}
}

// name is key's Redis name in the current epoch (cachekeys.in_epoch).
func (c *cache) name(key string) string {
	if e := c.epoch.Load(); e != 0 {
		return "e" + strconv.FormatInt(e, 10) + ":" + key
	}
	return key
}

// get returns the cached bytes, or nil on a miss. Redis trouble is a miss too: the read
// then comes from PostgreSQL.
func (c *cache) get(ctx context.Context, name string) []byte {
	conn, err := c.pool.GetContext(ctx)
	if err != nil {
		return nil
	}
	defer conn.Close()
	value, err := redis.Bytes(conn.Do("GET", name))
	if err != nil {
		if err != redis.ErrNil {
			logf("redis GET failed: %v", err)
		}
		return nil
	}
	return value
}

// set fills name for ttl seconds; a failure only costs the next read a miss.
func (c *cache) set(ctx context.Context, name string, ttl int, value []byte) {
	conn, err := c.pool.GetContext(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := conn.Do("SETEX", name, ttl, value); err != nil {
		logf("redis SETEX failed: %v", err)
	}
}

// invalidate bumps the generations of keys and deletes them, in one round trip. It reports
// whether Redis took it.
func (c *cache) invalidate(ctx context.Context, keys []string) bool {
	conn, err := c.pool.GetContext(ctx)
	if err != nil {
		logf("redis invalidation failed: %v", err)
		return false
	}
	defer conn.Close()
	args := make([]interface{}, 0, 2+2*len(keys)+1)
	args = append(args, 1+2*len(keys), generationSequence)
	for _, key := range keys {
		name := c.name(key)
		args = append(args, name, generationPrefix+name)
	}
	args = append(args, generationTTL)
	if _, err := bumpAndDelete.Do(conn, args...); err != nil {
		logf("redis invalidation failed: %v", err)
		return false
	}
	return true
}

func (c *cache) ping(ctx context.Context) bool {
	conn, err := c.pool.GetContext(ctx)
	if err != nil {
		return false
	}
	defer conn.Close()
	_, err = conn.Do("PING")
	return err == nil
}
