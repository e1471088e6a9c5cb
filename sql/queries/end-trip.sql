-- name: end-trip^
SELECT trip_id, card_id, vehicle_id, route_id, boarding_station_id, disembarking_station_id,
       boarding_time, disembarking_time, fare_id, fare_charged, is_transfer, transfer_group_id, driver_id
FROM end_trip($1, $2);
