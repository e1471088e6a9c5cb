-- name: unreconciled-cards*
-- Cards whose balance is not opening + recharges - fares charged, or is negative.
-- No row: the books balance. (README: Reliability.)
SELECT c.card_id, c.balance, c.opening_balance,
       coalesce(r.recharged, 0) AS recharged, coalesce(t.charged, 0) AS charged,
       c.opening_balance + coalesce(r.recharged, 0) - coalesce(t.charged, 0) AS expected
FROM cards c
LEFT JOIN (SELECT card_id, sum(amount) AS recharged FROM recharges GROUP BY card_id) r USING (card_id)
LEFT JOIN (SELECT card_id, sum(fare_charged) AS charged FROM trips GROUP BY card_id) t USING (card_id)
WHERE c.balance <> c.opening_balance + coalesce(r.recharged, 0) - coalesce(t.charged, 0)
   OR c.balance < 0
ORDER BY c.card_id;
