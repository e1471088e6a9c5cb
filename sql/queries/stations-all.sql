-- name: stations-all*
SELECT s.station_id, s.name, s.station_code, s.station_type, s.location_id, l.name AS locality,
       s.latitude::float8, s.longitude::float8, s.is_active
FROM stations s LEFT JOIN locations l ON l.location_id = s.location_id
ORDER BY s.station_code;
