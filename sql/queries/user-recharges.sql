-- name: user-recharges*
-- The user's 20 latest recharges over all their cards, newest first. No row: no such user;
-- one row with a NULL recharge_id: a user without recharges.
SELECT r.recharge_id, r.card_id, r.card_number, r.amount, r.recharge_timestamp,
       r.recharge_point_id, r.transaction_id
FROM users u
LEFT JOIN LATERAL (
    SELECT rc.recharge_id, rc.card_id, c.card_number, rc.amount, rc.recharge_timestamp,
           rc.recharge_point_id, rc.transaction_id
    FROM cards c JOIN recharges rc ON rc.card_id = c.card_id
    WHERE c.user_id = u.user_id
    ORDER BY rc.recharge_timestamp DESC, rc.recharge_id DESC LIMIT 20
) r ON true
WHERE u.user_id = $1;
