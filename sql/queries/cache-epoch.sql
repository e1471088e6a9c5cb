-- name: cache-epoch$
SELECT epoch FROM cache_state;
