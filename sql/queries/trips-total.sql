-- name: trips-total^
-- Sums the maintained counters (localities x shards rows), so it costs the same at any size.
SELECT coalesce(sum(trips), 0)::bigint AS total_trips,
       coalesce(sum(completed_trips), 0)::bigint AS completed_trips,
       coalesce(sum(trips - completed_trips), 0)::bigint AS active_trips,
       coalesce(sum(revenue), 0)::bigint AS total_revenue
FROM trip_counters;
