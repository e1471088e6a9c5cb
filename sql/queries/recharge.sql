-- name: recharge^
-- Columns: models.Recharge, then user_id and replayed for the caller.
SELECT recharge_id, card_id, amount, balance, recharge_timestamp, recharge_point_id, user_id, replayed
FROM recharge_card($1, $2, $3, $4, $5);
