-- name: register-token$
SELECT register_token($1, $2, $3, $4);
