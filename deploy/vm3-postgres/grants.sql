-- What the API's runtime role may do in its database: exactly what the API runs, nothing
-- more. migrate.sh applies it after every schema change (as the owner role, in one
-- transaction, so the running API never sees a privilege missing):
--
--   psql -v owner_role=travel_owner -v api_role=travel_api -d travel -f grants.sql
--
-- The write functions (sql/functions.sql) run with the caller's rights (SECURITY INVOKER),
-- and so do the triggers that keep the counters. So the runtime role needs, besides
-- EXECUTE on the functions it calls (and on the helpers those call), the table privileges
-- those functions use: e.g. UPDATE on cards, which a recharge updates. Tables it must not
-- touch get nothing: no DELETE anywhere but on expired idempotency records, no TRUNCATE,
-- no DDL (it owns nothing), no CREATE in the schema, no access to the fleet tables.
\set ON_ERROR_STOP on
SET ROLE :"owner_role";
BEGIN;

-- The database: only the roles named here connect; no temporary tables.
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"api_role";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"api_role";

-- Start from nothing, so that a privilege an earlier version of this file gave and this
-- one does not is taken back. Functions are executable by PUBLIC unless revoked, today and
-- (default privileges) for functions created later by the owner.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"api_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"api_role";
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC, :"api_role";
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Read by the named queries (sql/queries/*.sql) and by the write functions' checks; the
-- API checks at start that the schema is current (schema_state).
GRANT SELECT ON locations, stations, routes, fares, recharge_points, schema_state,
                users, cards, recharges, trips, trip_counters, trip_hour_counters, user_counters,
                write_tokens, cache_state
      TO :"api_role";

-- Written by the write functions and their triggers (SELECT ... FOR NO KEY UPDATE on cards
-- and trips needs UPDATE too; the upserts on counters need SELECT, above or here).
GRANT INSERT, UPDATE ON cards, trips, write_tokens, trip_counters, trip_hour_counters, user_counters TO :"api_role";
GRANT SELECT, INSERT, UPDATE ON user_active_cards TO :"api_role";
GRANT INSERT ON users, recharges TO :"api_role";
GRANT UPDATE ON cache_state TO :"api_role";
-- Idempotency records: stored with each keyed recharge, pruned after their retention.
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO :"api_role";
-- recharge_one takes its id with nextval(); issue_card draws card numbers.
GRANT USAGE ON SEQUENCE recharges_recharge_id_seq, card_number_seq TO :"api_role";

-- The functions the API calls (sql/queries/*.sql) ...
GRANT EXECUTE ON FUNCTION recharge_cards, board_cards, end_trips, create_user, issue_card,
                          set_card_status, register_token, create_token, revoke_token, bump_cache_epoch,
                          prune_idempotency_keys
      TO :"api_role";
-- ... and the helpers they and the counter triggers call, which run with its rights too.
GRANT EXECUTE ON FUNCTION refuse, recharge_one, board_one, end_one, lock_trip_counters, card_balance_max,
                          bogota_today, fare_in_force, counter_shard, bump_trip_counters, bogota_hour,
                          bump_trip_hour_counters, bump_user_counters, count_active_card
      TO :"api_role";
-- Not granted: load_demo_data, refresh_counters, drop_secondary_indexes (operator tools).

COMMIT;
