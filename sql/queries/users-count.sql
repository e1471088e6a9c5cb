-- name: users-count$
SELECT coalesce(sum(users), 0)::bigint FROM user_counters;
