-- name: revenue-by-locality*
SELECT c.location_id, coalesce(l.name, 'Unassigned') AS locality, sum(c.revenue)::bigint AS total_revenue
FROM trip_counters c LEFT JOIN locations l ON l.location_id = c.location_id
GROUP BY c.location_id, l.name
HAVING sum(c.trips) <> 0
ORDER BY total_revenue DESC, c.location_id;
