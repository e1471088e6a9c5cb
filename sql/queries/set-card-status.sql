-- name: set-card-status^
SELECT card_id, card_number, user_id, acquisition_date, status, balance, last_used_date, update_date FROM set_card_status($1, $2);
