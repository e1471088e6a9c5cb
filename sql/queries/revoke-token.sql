-- name: revoke-token$
SELECT revoke_token($1);
