-- name: tokens-live*
-- Every token not revoked, oldest first. Columns: models.TokenInfo (never the hash).
SELECT token_id, role, recharge_point_id, label, created_at, last_used_at
FROM write_tokens WHERE revoked_at IS NULL ORDER BY token_id;
