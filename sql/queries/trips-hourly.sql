-- name: trips-hourly*
-- Trips and revenue per boarding hour (Bogotá's time) over the last $1 hours, oldest first,
-- every hour present. Reads a primary-key range of the maintained hourly counters ($1 hours
-- x at most 16 shards), so it costs the same at any number of trips.
SELECT h.hour, coalesce(c.trips, 0)::bigint AS trips,
       coalesce(c.completed_trips, 0)::bigint AS completed_trips,
       coalesce(c.revenue, 0)::bigint AS revenue
FROM generate_series(bogota_hour(now()) - ($1::integer - 1) * interval '1 hour', bogota_hour(now()),
                     interval '1 hour') AS h(hour)
LEFT JOIN (SELECT hour, sum(trips) AS trips, sum(completed_trips) AS completed_trips, sum(revenue) AS revenue
           FROM trip_hour_counters
           WHERE hour > bogota_hour(now()) - $1::integer * interval '1 hour' AND hour <= bogota_hour(now())
           GROUP BY hour) AS c USING (hour)
ORDER BY h.hour;
