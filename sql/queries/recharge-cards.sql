-- name: recharge-cards*
-- A batch of recharges (arrays, item i = element i; see recharge_cards in functions.sql).
-- Columns: item, the refusal, then models.Recharge, user_id and replayed for the caller.
SELECT item, refusal, message, detail,
       recharge_id, card_id, amount, balance, recharge_timestamp, recharge_point_id, user_id, replayed
FROM recharge_cards($1, $2, $3, $4, $5);
