-- name: bump-cache-epoch$
SELECT bump_cache_epoch();
