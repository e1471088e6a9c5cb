-- name: trips-by-locality*
-- Trips per locality of the boarding station, from the maintained counters.
SELECT c.location_id, coalesce(l.name, 'Unassigned') AS locality,
       sum(c.trips)::bigint AS total_trips,
       sum(c.completed_trips)::bigint AS completed_trips,
       sum(c.trips - c.completed_trips)::bigint AS active_trips
FROM trip_counters c LEFT JOIN locations l ON l.location_id = c.location_id
GROUP BY c.location_id, l.name
HAVING sum(c.trips) <> 0
ORDER BY total_trips DESC, c.location_id;
