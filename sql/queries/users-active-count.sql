-- name: users-active-count$
-- Users holding at least one active card.
SELECT coalesce(sum(active_users), 0)::bigint FROM user_counters;
