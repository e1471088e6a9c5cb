-- name: board-trip^
-- One boarding in its own call and transaction: the Go version's write (go/). The Python
-- service batches the boardings that arrive together (board-cards). board_trip raises a
-- refusal with its SQLSTATE, message and DETAIL instead of returning it as a row.
-- Columns: models.Boarding.
SELECT trip_id, card_id, route_id, boarding_station_id, boarding_time, fare_id, fare_charged,
       is_transfer, transfer_group_id, balance
FROM board_trip($1, $2, $3);
