-- name: end-trips*
-- A batch of trip ends (arrays, item i = element i; see end_trips in functions.sql).
-- Columns: item, the refusal, then models.Trip.
SELECT e.item, e.refusal, e.message, e.detail,
       (e.trip).trip_id, (e.trip).card_id, (e.trip).vehicle_id, (e.trip).route_id,
       (e.trip).boarding_station_id, (e.trip).disembarking_station_id, (e.trip).boarding_time,
       (e.trip).disembarking_time, (e.trip).fare_id, (e.trip).fare_charged, (e.trip).is_transfer,
       (e.trip).transfer_group_id, (e.trip).driver_id
FROM end_trips($1, $2) e;
