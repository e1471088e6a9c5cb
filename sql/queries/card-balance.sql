-- name: card-balance^
SELECT card_id, balance, status, last_used_date FROM cards WHERE card_id = $1;
