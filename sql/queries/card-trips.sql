-- name: card-trips*
-- The card's 20 latest trips (trips_card_time_idx). No row: no such card; one row with a
-- NULL trip_id: a card without trips.
SELECT t.trip_id, t.card_id, t.vehicle_id, t.route_id, t.boarding_station_id,
       t.disembarking_station_id, t.boarding_time, t.disembarking_time, t.fare_id,
       t.fare_charged, t.is_transfer, t.transfer_group_id, t.driver_id
FROM cards c
LEFT JOIN LATERAL (
    SELECT * FROM trips WHERE trips.card_id = c.card_id
    ORDER BY boarding_time DESC, trip_id DESC LIMIT 20
) t ON true
WHERE c.card_id = $1;
