-- name: revenue-total^
-- Revenue is what boardings debited (trips.fare_charged), from the maintained counters.
SELECT coalesce(sum(revenue), 0)::bigint AS total_revenue FROM trip_counters;
