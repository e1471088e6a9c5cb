-- name: board^
-- Columns: models.Boarding.
SELECT trip_id, card_id, route_id, boarding_station_id, boarding_time, fare_id, fare_charged,
       is_transfer, transfer_group_id, balance
FROM board_trip($1, $2, $3);
