-- name: create-token^
-- Columns: models.TokenInfo.
SELECT token_id, role, recharge_point_id, label, created_at, last_used_at
FROM create_token($1, $2, $3, $4);
