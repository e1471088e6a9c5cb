-- name: token-by-hash^
SELECT token_id, role, recharge_point_id FROM write_tokens
WHERE token_hash = $1 AND revoked_at IS NULL;
