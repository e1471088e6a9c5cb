-- name: token-by-hash^
-- The live token with this sha256. It runs only on a token-cache miss (auth.TokenCache), and
-- notes when the token was last seen at most once a minute: a cheap, approximate last_used_at.
WITH token AS (
    SELECT token_id, role, recharge_point_id, last_used_at FROM write_tokens
    WHERE token_hash = $1 AND revoked_at IS NULL
), seen AS (
    UPDATE write_tokens w SET last_used_at = now() FROM token t
    WHERE w.token_id = t.token_id
      AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute')
)
SELECT token_id, role, recharge_point_id FROM token;
