-- name: recharge-card^
-- One recharge in its own call and transaction: the Go version's write (go/). The Python
-- service batches the recharges that arrive together (recharge-cards). recharge_card raises
-- a refusal with its SQLSTATE, message and DETAIL instead of returning it as a row.
-- Columns: models.Recharge, then user_id and replayed for the caller.
SELECT recharge_id, card_id, amount, balance, recharge_timestamp, recharge_point_id, user_id, replayed
FROM recharge_card($1, $2, $3, $4, $5);
