-- name: prune-idempotency-keys$
SELECT prune_idempotency_keys($1, $2);
