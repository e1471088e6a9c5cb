-- name: board-cards*
-- A batch of boardings (arrays, item i = element i; see board_cards in functions.sql).
-- Columns: item, the refusal, then models.Boarding.
SELECT item, refusal, message, detail,
       trip_id, card_id, route_id, boarding_station_id, boarding_time, fare_id, fare_charged,
       is_transfer, transfer_group_id, balance
FROM board_cards($1, $2, $3);
