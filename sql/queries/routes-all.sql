-- name: routes-all*
SELECT route_id, route_code, route_name, route_type, origin_station_id, destination_station_id, is_active
FROM routes ORDER BY route_code;
