-- name: issue-card^
SELECT card_id, card_number, user_id, acquisition_date, status, balance, last_used_date, update_date FROM issue_card($1, $2);
