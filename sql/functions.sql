-- Travel Recharge API: every write is one call of one of these functions (one round trip,
-- one transaction), plus the triggers that keep the aggregates exact.
--
-- Each domain refusal has its own SQLSTATE (class "TR"), which the API maps to an HTTP
-- status and a stable `code` (see travel/errors.py); DETAIL carries JSON members for the answer.
--   TRN01 CARD_NOT_FOUND      TRN02 TRIP_NOT_FOUND     TRN03 USER_NOT_FOUND
--   TRN04 ROUTE_NOT_FOUND     TRN05 STATION_NOT_FOUND  TRN06 RECHARGE_POINT_NOT_FOUND
--   TRN07 TOKEN_NOT_FOUND
--   TRC01 CARD_NOT_ACTIVE     TRC02 TRIP_ALREADY_ENDED TRC03 ROUTE_NOT_ACTIVE
--   TRC04 BALANCE_LIMIT       TRC05 LAST_ADMIN_TOKEN
--   TRP01 INSUFFICIENT_BALANCE
--   TRI01 IDEMPOTENCY_KEY_REUSED
--   TRF01 FARE_NOT_CONFIGURED
-- Unique violations (23505) are ALREADY_EXISTS. Functions are CREATE OR REPLACE: applying
-- this file again changes nothing.

-- ---------------------------------------------------------------- aggregates
-- Shard of the counters that this backend writes: concurrent writers are on different
-- connections, so they rarely share a counter row.
CREATE OR REPLACE FUNCTION counter_shard() RETURNS smallint
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT (pg_backend_pid() % 16)::smallint $$;

CREATE OR REPLACE FUNCTION bump_trip_counters(p_location_id integer, p_trips bigint,
                                              p_completed bigint, p_revenue bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO trip_counters AS c (location_id, shard, trips, completed_trips, revenue)
    VALUES (p_location_id, counter_shard(), p_trips, p_completed, p_revenue)
    ON CONFLICT (location_id, shard) DO UPDATE
        SET trips = c.trips + excluded.trips,
            completed_trips = c.completed_trips + excluded.completed_trips,
            revenue = c.revenue + excluded.revenue
$$;

-- The hour a trip counts in: the start of its boarding hour in Bogotá's time.
CREATE OR REPLACE FUNCTION bogota_hour(p_at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT date_trunc('hour', p_at, 'America/Bogota') $$;

CREATE OR REPLACE FUNCTION bump_trip_hour_counters(p_hour timestamptz, p_trips bigint,
                                                   p_completed bigint, p_revenue bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO trip_hour_counters AS c (hour, shard, trips, completed_trips, revenue)
    VALUES (p_hour, counter_shard(), p_trips, p_completed, p_revenue)
    ON CONFLICT (hour, shard) DO UPDATE
        SET trips = c.trips + excluded.trips,
            completed_trips = c.completed_trips + excluded.completed_trips,
            revenue = c.revenue + excluded.revenue
$$;

-- Statement triggers with transition tables: one counter update per locality and one per
-- boarding hour per statement, so a bulk load of millions of trips costs two GROUP BYs, and
-- a boarding two upserts. Hours are bumped in order: two bulk writers never lock in a cycle.
CREATE OR REPLACE FUNCTION trips_counted_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_trip_counters(coalesce(s.location_id, 0), count(*),
                               count(n.disembarking_time), sum(n.fare_charged)::bigint)
    FROM new_rows n LEFT JOIN stations s ON s.station_id = n.boarding_station_id
    GROUP BY coalesce(s.location_id, 0);
    PERFORM bump_trip_hour_counters(bogota_hour(n.boarding_time), count(*),
                                    count(n.disembarking_time), sum(n.fare_charged)::bigint)
    FROM new_rows n GROUP BY bogota_hour(n.boarding_time) ORDER BY bogota_hour(n.boarding_time);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION trips_counted_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_trip_counters(coalesce(s.location_id, 0), -count(*),
                               -count(o.disembarking_time), -sum(o.fare_charged)::bigint)
    FROM old_rows o LEFT JOIN stations s ON s.station_id = o.boarding_station_id
    GROUP BY coalesce(s.location_id, 0);
    PERFORM bump_trip_hour_counters(bogota_hour(o.boarding_time), -count(*),
                                    -count(o.disembarking_time), -sum(o.fare_charged)::bigint)
    FROM old_rows o GROUP BY bogota_hour(o.boarding_time) ORDER BY bogota_hour(o.boarding_time);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION trips_counted_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_trip_counters(location_id, sum(trips)::bigint, sum(completed)::bigint,
                               sum(revenue)::bigint)
    FROM (SELECT coalesce(s.location_id, 0) AS location_id, count(*) AS trips,
                 count(n.disembarking_time) AS completed, sum(n.fare_charged) AS revenue
          FROM new_rows n LEFT JOIN stations s ON s.station_id = n.boarding_station_id
          GROUP BY 1
          UNION ALL
          SELECT coalesce(s.location_id, 0), -count(*), -count(o.disembarking_time), -sum(o.fare_charged)
          FROM old_rows o LEFT JOIN stations s ON s.station_id = o.boarding_station_id
          GROUP BY 1) delta
    GROUP BY location_id
    HAVING sum(trips) <> 0 OR sum(completed) <> 0 OR sum(revenue) <> 0;
    PERFORM bump_trip_hour_counters(hour, sum(trips)::bigint, sum(completed)::bigint, sum(revenue)::bigint)
    FROM (SELECT bogota_hour(n.boarding_time) AS hour, count(*) AS trips,
                 count(n.disembarking_time) AS completed, sum(n.fare_charged) AS revenue
          FROM new_rows n GROUP BY 1
          UNION ALL
          SELECT bogota_hour(o.boarding_time), -count(*), -count(o.disembarking_time), -sum(o.fare_charged)
          FROM old_rows o GROUP BY 1) delta
    GROUP BY hour
    HAVING sum(trips) <> 0 OR sum(completed) <> 0 OR sum(revenue) <> 0
    ORDER BY hour;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION trips_counted_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM trip_counters;
    DELETE FROM trip_hour_counters;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION bump_user_counters(p_users bigint, p_active_users bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO user_counters AS c (shard, users, active_users)
    VALUES (counter_shard(), p_users, p_active_users)
    ON CONFLICT (shard) DO UPDATE
        SET users = c.users + excluded.users, active_users = c.active_users + excluded.active_users
$$;

CREATE OR REPLACE FUNCTION users_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM bump_user_counters(count(*), 0) FROM new_rows HAVING count(*) > 0;
    ELSE
        PERFORM bump_user_counters(-count(*), 0) FROM old_rows HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END $$;

-- Adds p_delta to a user's active cards; the user becomes active on the first and inactive
-- after the last. The upsert's row lock orders concurrent changes of one user.
CREATE OR REPLACE FUNCTION count_active_card(p_user_id bigint, p_delta integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_after integer;
BEGIN
    IF p_delta > 0 THEN
        INSERT INTO user_active_cards AS u (user_id, active_cards) VALUES (p_user_id, p_delta)
        ON CONFLICT (user_id) DO UPDATE SET active_cards = u.active_cards + excluded.active_cards
        RETURNING u.active_cards INTO v_after;
    ELSE  -- an upsert would check the negative insert row against the CHECK first
        UPDATE user_active_cards u SET active_cards = u.active_cards + p_delta
        WHERE u.user_id = p_user_id RETURNING u.active_cards INTO v_after;
    END IF;
    IF p_delta > 0 AND v_after = p_delta THEN
        PERFORM bump_user_counters(0, 1);
    ELSIF p_delta < 0 AND v_after = 0 THEN
        PERFORM bump_user_counters(0, -1);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION cards_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'active' THEN
        PERFORM count_active_card(OLD.user_id, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' THEN
        PERFORM count_active_card(NEW.user_id, 1);
    END IF;
    RETURN NULL;
END $$;

-- Recomputes every counter from the base tables: after a bulk load with triggers off, and
-- as the reference that tests compare the maintained counters with.
CREATE OR REPLACE FUNCTION refresh_counters() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Writers wait while the counters are rebuilt, or their deltas would be lost or doubled.
    LOCK TABLE trips, cards, users IN SHARE MODE;
    DELETE FROM trip_counters;
    INSERT INTO trip_counters (location_id, shard, trips, completed_trips, revenue)
    SELECT coalesce(s.location_id, 0), 0, count(*), count(t.disembarking_time), coalesce(sum(t.fare_charged), 0)
    FROM trips t LEFT JOIN stations s ON s.station_id = t.boarding_station_id
    GROUP BY 1;
    DELETE FROM trip_hour_counters;
    INSERT INTO trip_hour_counters (hour, shard, trips, completed_trips, revenue)
    SELECT bogota_hour(boarding_time), 0, count(*), count(disembarking_time), coalesce(sum(fare_charged), 0)
    FROM trips GROUP BY 1;
    DELETE FROM user_active_cards;
    INSERT INTO user_active_cards (user_id, active_cards)
    SELECT user_id, count(*) FROM cards WHERE status = 'active' GROUP BY user_id;
    DELETE FROM user_counters;
    INSERT INTO user_counters (shard, users, active_users)
    VALUES (0, (SELECT count(*) FROM users), (SELECT count(*) FROM user_active_cards));
END $$;

-- Triggers are dropped and created again so that this file stays re-appliable.
DROP TRIGGER IF EXISTS trips_counted_insert ON trips;
CREATE TRIGGER trips_counted_insert AFTER INSERT ON trips
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION trips_counted_insert();
DROP TRIGGER IF EXISTS trips_counted_update ON trips;
CREATE TRIGGER trips_counted_update AFTER UPDATE ON trips
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trips_counted_update();
DROP TRIGGER IF EXISTS trips_counted_delete ON trips;
CREATE TRIGGER trips_counted_delete AFTER DELETE ON trips
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION trips_counted_delete();
DROP TRIGGER IF EXISTS trips_counted_truncate ON trips;
CREATE TRIGGER trips_counted_truncate AFTER TRUNCATE ON trips
    FOR EACH STATEMENT EXECUTE FUNCTION trips_counted_truncate();
DROP TRIGGER IF EXISTS users_counted_insert ON users;
CREATE TRIGGER users_counted_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION users_counted();
DROP TRIGGER IF EXISTS users_counted_delete ON users;
CREATE TRIGGER users_counted_delete AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION users_counted();
DROP TRIGGER IF EXISTS cards_counted ON cards;
CREATE TRIGGER cards_counted AFTER INSERT OR DELETE OR UPDATE OF status, user_id ON cards
    FOR EACH ROW EXECUTE FUNCTION cards_counted();

-- A database that held trips or users before the counters existed (an upgrade of an older
-- one) has them counted once, here; the trigger DDL above holds off writers until commit.
DO $count_history$
BEGIN
    IF (EXISTS (SELECT FROM trips) AND (NOT EXISTS (SELECT FROM trip_counters)
                                        OR NOT EXISTS (SELECT FROM trip_hour_counters)))
       OR (EXISTS (SELECT FROM users) AND NOT EXISTS (SELECT FROM user_counters)) THEN
        PERFORM refresh_counters();
    END IF;
END
$count_history$;

-- ---------------------------------------------------------------- helpers
CREATE OR REPLACE FUNCTION refuse(p_sqlstate text, p_message text, p_detail jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail::text;
END $$;

-- The release before group commit locked and checked one card per call, raising.
DROP FUNCTION IF EXISTS lock_card(bigint);
DROP FUNCTION IF EXISTS require_active_card(bigint, text);

-- The most a card may hold, in pesos: schema.sql's cards_balance_max spells it too.
CREATE OR REPLACE FUNCTION card_balance_max() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 5000000::bigint $$;

-- Fares change at midnight in Bogotá, whatever the server's time zone.
CREATE OR REPLACE FUNCTION bogota_today() RETURNS date
LANGUAGE sql STABLE AS $$ SELECT (now() AT TIME ZONE 'America/Bogota')::date $$;

-- The fare of a type in force today (fares change by date, never by overwriting).
CREATE OR REPLACE FUNCTION fare_in_force(p_fare_type text, OUT fare_id integer, OUT value bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT f.fare_id, f.value INTO fare_id, value FROM fares f
    WHERE f.fare_type = p_fare_type AND f.start_date <= bogota_today()
      AND (f.end_date IS NULL OR f.end_date >= bogota_today())
    ORDER BY f.start_date DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM refuse('TRF01', format('no %s fare is in force', p_fare_type),
                       jsonb_build_object('fare_type', p_fare_type));
    END IF;
END $$;

-- Lock this backend's counter rows of the localities a batch's trips will bump, in location
-- order: two batches in one counter shard must not take two localities in opposite orders.
-- (A batch that bumps one locality holds at most one counter row: it cannot deadlock.)
CREATE OR REPLACE FUNCTION lock_trip_counters(p_location_ids integer[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(DISTINCT l) FROM unnest(p_location_ids) l) > 1 THEN
        INSERT INTO trip_counters AS c (location_id, shard)
        SELECT DISTINCT l, counter_shard() FROM unnest(p_location_ids) l ORDER BY 1
        ON CONFLICT (location_id, shard) DO UPDATE SET trips = c.trips WHERE false;  -- locks, writes nothing
    END IF;
END $$;

-- ---------------------------------------------------------------- writes, in batches
-- Group commit: the API sends the writes of one kind that arrive together as ONE call of
-- recharge_cards, board_cards or end_trips (one round trip, one transaction, one commit).
-- Item i of a batch is the i-th element of every array; the answer is one row per item, in
-- order: `item` (1-based), then either a refusal (`refusal` = its SQLSTATE from the list at
-- the top, `message`, `detail`) or the result columns. Refusals are decided by the *_one
-- functions without raising, so one refused item never aborts the others; anything raised
-- (a missing fare, a broken constraint) aborts the batch, and the API reruns its items one
-- by one. Each batch first locks its rows in key order, so that two batches never wait on
-- each other in a cycle; items on one row apply in the order given.
-- The single-item functions (recharge_card, board_trip, end_trip) are the batch of one that
-- raises its refusal, for SQL callers.
-- The batch functions plan their statements once (force_generic_plan): re-planning them for
-- each call's arrays cost more than running them (a boarding batch of 8: 121 -> 90 µs an item).

-- One recharge; the caller holds the card's row lock. With an idempotency key, the first
-- answer is stored in this transaction; the same key again (same token) replays it when the
-- body matches, or is refused (TRI01). A refused recharge leaves its key unused.
CREATE OR REPLACE FUNCTION recharge_one(
    p_card_id bigint, p_amount bigint, p_recharge_point_id integer,
    p_token_id integer, p_idempotency_key text,
    OUT refusal text, OUT message text, OUT detail jsonb,
    OUT recharge_id bigint, OUT card_id bigint, OUT amount bigint, OUT balance bigint,
    OUT recharge_timestamp timestamptz, OUT recharge_point_id integer, OUT user_id bigint,
    OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_balance bigint;
BEGIN
    SELECT c.status, c.balance, c.user_id INTO v_status, v_balance, user_id
    FROM cards c WHERE c.card_id = p_card_id;
    IF NOT FOUND THEN
        SELECT 'TRN01', 'card not found', jsonb_build_object('card_id', p_card_id) INTO refusal, message, detail;
        RETURN;
    END IF;

    recharge_id := nextval('recharges_recharge_id_seq');
    IF p_idempotency_key IS NOT NULL THEN
        -- Inserted first: a concurrent holder of the key (on another card) is waited for here.
        INSERT INTO idempotency_keys (token_id, idempotency_key, recharge_id, balance_after)
        VALUES (p_token_id, p_idempotency_key, recharge_id, v_balance + p_amount)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            SELECT r.recharge_id, r.card_id, r.amount, k.balance_after, r.recharge_timestamp,
                   r.recharge_point_id, c.user_id, true
            INTO recharge_id, card_id, amount, balance, recharge_timestamp,
                 recharge_point_id, user_id, replayed
            FROM idempotency_keys k JOIN recharges r ON r.recharge_id = k.recharge_id
                 JOIN cards c ON c.card_id = r.card_id
            WHERE k.token_id = p_token_id AND k.idempotency_key = p_idempotency_key;
            IF card_id <> p_card_id OR amount <> p_amount
               OR recharge_point_id IS DISTINCT FROM p_recharge_point_id THEN
                SELECT 'TRI01', 'this Idempotency-Key was used with another request',
                       jsonb_build_object('recharge_id', recharge_id) INTO refusal, message, detail;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF v_status <> 'active' THEN
        SELECT 'TRC01', format('card is %s', v_status),
               jsonb_build_object('card_id', p_card_id, 'card_status', v_status) INTO refusal, message, detail;
    ELSIF p_recharge_point_id IS NOT NULL
          AND NOT EXISTS (SELECT FROM recharge_points p WHERE p.recharge_point_id = p_recharge_point_id) THEN
        SELECT 'TRN06', 'recharge point not found',
               jsonb_build_object('recharge_point_id', p_recharge_point_id) INTO refusal, message, detail;
    -- Compared as a difference: a sum could overflow bigint on a card imported above the maximum.
    ELSIF p_amount > card_balance_max() - v_balance THEN
        SELECT 'TRC04', 'the recharge would take the balance past its maximum',
               jsonb_build_object('card_id', p_card_id, 'balance', v_balance, 'balance_max', card_balance_max())
        INTO refusal, message, detail;
    END IF;
    IF refusal IS NOT NULL THEN
        IF p_idempotency_key IS NOT NULL THEN
            DELETE FROM idempotency_keys k
            WHERE k.token_id = p_token_id AND k.idempotency_key = p_idempotency_key;
        END IF;
        RETURN;
    END IF;

    INSERT INTO recharges AS r (recharge_id, card_id, recharge_point_id, amount)
    VALUES (recharge_id, p_card_id, p_recharge_point_id, p_amount)
    RETURNING r.card_id, r.amount, r.recharge_timestamp, r.recharge_point_id
    INTO card_id, amount, recharge_timestamp, recharge_point_id;
    UPDATE cards c SET balance = c.balance + p_amount, update_date = recharge_timestamp
    WHERE c.card_id = p_card_id RETURNING c.balance INTO balance;
    replayed := false;
END $$;

CREATE OR REPLACE FUNCTION recharge_cards(
    p_card_ids bigint[], p_amounts bigint[], p_recharge_point_ids integer[],
    p_token_ids integer[], p_idempotency_keys text[])
RETURNS TABLE (item integer, refusal text, message text, detail jsonb,
               recharge_id bigint, card_id bigint, amount bigint, balance bigint,
               recharge_timestamp timestamptz, recharge_point_id integer, user_id bigint,
               replayed boolean)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM 1 FROM cards c WHERE c.card_id = ANY (p_card_ids) ORDER BY c.card_id FOR NO KEY UPDATE;
    FOR i IN 1 .. cardinality(p_card_ids) LOOP
        RETURN QUERY SELECT i, r.* FROM recharge_one(p_card_ids[i], p_amounts[i], p_recharge_point_ids[i],
                                                    p_token_ids[i], p_idempotency_keys[i]) r;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION recharge_card(
    p_card_id bigint, p_amount bigint, p_recharge_point_id integer,
    p_token_id integer, p_idempotency_key text,
    OUT recharge_id bigint, OUT card_id bigint, OUT amount bigint, OUT balance bigint,
    OUT recharge_timestamp timestamptz, OUT recharge_point_id integer, OUT user_id bigint,
    OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_done record;
BEGIN
    SELECT * INTO v_done FROM recharge_cards(ARRAY[p_card_id], ARRAY[p_amount], ARRAY[p_recharge_point_id],
                                             ARRAY[p_token_id], ARRAY[p_idempotency_key]);
    IF v_done.refusal IS NOT NULL THEN
        PERFORM refuse(v_done.refusal, v_done.message, v_done.detail);
    END IF;
    SELECT v_done.recharge_id, v_done.card_id, v_done.amount, v_done.balance, v_done.recharge_timestamp,
           v_done.recharge_point_id, v_done.user_id, v_done.replayed
    INTO recharge_id, card_id, amount, balance, recharge_timestamp, recharge_point_id, user_id, replayed;
END $$;

-- One boarding decided, not yet written (board_cards writes a wave of them at once); the
-- caller holds the card's row lock. Debit the fare of the route type, or the transfer fare
-- when the card boarded another route within 90 minutes (a transfer onto a cable route is
-- free, as TransMiCable's integration with the bus network is; any other transfer costs
-- TRANSFER_200_COST). An earlier trip still open does not stop a boarding: zonal buses have
-- no tap-out.
DROP FUNCTION IF EXISTS board_one(bigint, integer, integer);
CREATE OR REPLACE FUNCTION board_one(
    p_card_id bigint, p_route_id integer, p_boarding_station_id integer,
    OUT refusal text, OUT message text, OUT detail jsonb,
    OUT boarding_time timestamptz, OUT fare_id integer, OUT fare_charged bigint,
    OUT is_transfer boolean, OUT transfer_group_id bigint, OUT user_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_balance bigint;
    v_route_type text;
    v_route_active boolean;
    v_previous record;
    v_fare_type text;
BEGIN
    SELECT c.status, c.balance, c.user_id INTO v_status, v_balance, user_id
    FROM cards c WHERE c.card_id = p_card_id;
    IF NOT FOUND THEN
        SELECT 'TRN01', 'card not found', jsonb_build_object('card_id', p_card_id) INTO refusal, message, detail;
        RETURN;
    END IF;
    IF v_status <> 'active' THEN
        SELECT 'TRC01', format('card is %s', v_status),
               jsonb_build_object('card_id', p_card_id, 'card_status', v_status) INTO refusal, message, detail;
        RETURN;
    END IF;
    SELECT r.route_type, r.is_active INTO v_route_type, v_route_active
    FROM routes r WHERE r.route_id = p_route_id;
    IF NOT FOUND THEN
        SELECT 'TRN04', 'route not found', jsonb_build_object('route_id', p_route_id) INTO refusal, message, detail;
        RETURN;
    END IF;
    IF NOT v_route_active THEN
        SELECT 'TRC03', 'route is not in service', jsonb_build_object('route_id', p_route_id)
        INTO refusal, message, detail;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM stations s WHERE s.station_id = p_boarding_station_id) THEN
        SELECT 'TRN05', 'station not found', jsonb_build_object('station_id', p_boarding_station_id)
        INTO refusal, message, detail;
        RETURN;
    END IF;

    SELECT t.trip_id, t.route_id, t.boarding_time, t.transfer_group_id INTO v_previous
    FROM trips t WHERE t.card_id = p_card_id
    ORDER BY t.boarding_time DESC, t.trip_id DESC LIMIT 1;
    boarding_time := clock_timestamp();
    is_transfer := v_previous.trip_id IS NOT NULL
                   AND v_previous.route_id <> p_route_id
                   AND v_previous.boarding_time > boarding_time - interval '90 minutes';
    IF is_transfer THEN
        v_fare_type := CASE WHEN v_route_type = 'CABLE' THEN 'TRANSFER_0_COST' ELSE 'TRANSFER_200_COST' END;
        transfer_group_id := coalesce(v_previous.transfer_group_id, v_previous.trip_id);
    ELSE
        v_fare_type := CASE WHEN v_route_type = 'CABLE' THEN 'STANDARD_CABLE' ELSE 'STANDARD_SITP' END;
    END IF;
    SELECT f.fare_id, f.value INTO fare_id, fare_charged FROM fare_in_force(v_fare_type) f;
    IF v_balance < fare_charged THEN
        SELECT 'TRP01', 'balance is lower than the fare',
               jsonb_build_object('balance', v_balance, 'fare', fare_charged, 'fare_type', v_fare_type)
        INTO refusal, message, detail;
    END IF;
END $$;

-- Boardings are decided item by item (board_one reads the card and its last trip) and written
-- in waves: one INSERT of the wave's trips and one UPDATE of its cards, so the counter
-- trigger runs once a wave, not once a boarding. A wave holds each card once: an item whose
-- card already boarded in the current wave first writes the wave, so that its decision reads
-- the balance and the trip before it.
CREATE OR REPLACE FUNCTION board_cards(p_card_ids bigint[], p_route_ids integer[],
                                       p_boarding_station_ids integer[])
RETURNS TABLE (item integer, refusal text, message text, detail jsonb,
               trip_id bigint, card_id bigint, route_id integer, boarding_station_id integer,
               boarding_time timestamptz, fare_id integer, fare_charged bigint,
               is_transfer boolean, transfer_group_id bigint, balance bigint, user_id bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_count integer := cardinality(p_card_ids);
    v_one record;
    -- The wave: items decided and not yet written, and what board_one decided for each.
    v_items integer[] := '{}';
    v_cards bigint[] := '{}';
    v_times timestamptz[] := '{}';
    v_fare_ids integer[] := '{}';
    v_fares bigint[] := '{}';
    v_transfers boolean[] := '{}';
    v_groups bigint[] := '{}';
    v_users bigint[] := '{}';
BEGIN
    PERFORM 1 FROM cards c WHERE c.card_id = ANY (p_card_ids) ORDER BY c.card_id FOR NO KEY UPDATE;
    -- Where the counter trigger will count each trip: the boarding station's locality.
    PERFORM lock_trip_counters(array_agg(coalesce(s.location_id, 0)))
    FROM unnest(p_boarding_station_ids) b (station_id) JOIN stations s ON s.station_id = b.station_id;
    FOR i IN 1 .. v_count + 1 LOOP  -- the last turn only writes the last wave
        IF cardinality(v_items) > 0 AND (i > v_count OR p_card_ids[i] = ANY (v_cards)) THEN
            RETURN QUERY
            WITH decided AS (
                SELECT * FROM unnest(v_items, v_cards, v_times, v_fare_ids, v_fares, v_transfers, v_groups, v_users)
                    AS d (item, card_id, boarding_time, fare_id, fare_charged, is_transfer, transfer_group_id, user_id)
            ), written AS (
                INSERT INTO trips AS t (card_id, route_id, boarding_station_id, boarding_time, fare_id,
                                        fare_charged, is_transfer, transfer_group_id)
                SELECT d.card_id, p_route_ids[d.item], p_boarding_station_ids[d.item], d.boarding_time,
                       d.fare_id, d.fare_charged, d.is_transfer, d.transfer_group_id
                FROM decided d ORDER BY d.item
                RETURNING t.trip_id, t.card_id
            ), debited AS (
                UPDATE cards c SET balance = c.balance - d.fare_charged, last_used_date = d.boarding_time,
                                   update_date = d.boarding_time
                FROM decided d WHERE c.card_id = d.card_id
                RETURNING c.card_id, c.balance
            )
            SELECT d.item, NULL::text, NULL::text, NULL::jsonb, w.trip_id, d.card_id, p_route_ids[d.item],
                   p_boarding_station_ids[d.item], d.boarding_time, d.fare_id, d.fare_charged,
                   d.is_transfer, d.transfer_group_id, b.balance, d.user_id
            FROM decided d JOIN written w ON w.card_id = d.card_id JOIN debited b ON b.card_id = d.card_id;
            v_items := '{}'; v_cards := '{}'; v_times := '{}'; v_fare_ids := '{}'; v_fares := '{}';
            v_transfers := '{}'; v_groups := '{}'; v_users := '{}';
        END IF;
        EXIT WHEN i > v_count;
        SELECT * INTO v_one FROM board_one(p_card_ids[i], p_route_ids[i], p_boarding_station_ids[i]);
        IF v_one.refusal IS NOT NULL THEN
            RETURN QUERY SELECT i, v_one.refusal, v_one.message, v_one.detail, NULL::bigint, NULL::bigint,
                                NULL::integer, NULL::integer, NULL::timestamptz, NULL::integer, NULL::bigint,
                                NULL::boolean, NULL::bigint, NULL::bigint, NULL::bigint;
            CONTINUE;
        END IF;
        v_items := v_items || i;
        v_cards := v_cards || p_card_ids[i];
        v_times := v_times || v_one.boarding_time;
        v_fare_ids := v_fare_ids || v_one.fare_id;
        v_fares := v_fares || v_one.fare_charged;
        v_transfers := v_transfers || v_one.is_transfer;
        v_groups := v_groups || v_one.transfer_group_id;
        v_users := v_users || v_one.user_id;
    END LOOP;
END $$;


CREATE OR REPLACE FUNCTION board_trip(
    p_card_id bigint, p_route_id integer, p_boarding_station_id integer,
    OUT trip_id bigint, OUT card_id bigint, OUT route_id integer, OUT boarding_station_id integer,
    OUT boarding_time timestamptz, OUT fare_id integer, OUT fare_charged bigint,
    OUT is_transfer boolean, OUT transfer_group_id bigint, OUT balance bigint, OUT user_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_done record;
BEGIN
    SELECT * INTO v_done FROM board_cards(ARRAY[p_card_id], ARRAY[p_route_id], ARRAY[p_boarding_station_id]);
    IF v_done.refusal IS NOT NULL THEN
        PERFORM refuse(v_done.refusal, v_done.message, v_done.detail);
    END IF;
    SELECT v_done.trip_id, v_done.card_id, v_done.route_id, v_done.boarding_station_id, v_done.boarding_time,
           v_done.fare_id, v_done.fare_charged, v_done.is_transfer, v_done.transfer_group_id, v_done.balance,
           v_done.user_id
    INTO trip_id, card_id, route_id, boarding_station_id, boarding_time, fare_id, fare_charged, is_transfer,
         transfer_group_id, balance, user_id;
END $$;

-- Alight: close an open trip; the caller holds the trip's row lock.
CREATE OR REPLACE FUNCTION end_one(p_trip_id bigint, p_disembarking_station_id integer,
                                   OUT refusal text, OUT message text, OUT detail jsonb, OUT trip trips)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO trip FROM trips t WHERE t.trip_id = p_trip_id;
    IF NOT FOUND THEN
        SELECT 'TRN02', 'trip not found', jsonb_build_object('trip_id', p_trip_id) INTO refusal, message, detail;
        trip := NULL;
        RETURN;
    END IF;
    IF trip.disembarking_time IS NOT NULL THEN
        SELECT 'TRC02', 'trip already ended',
               jsonb_build_object('trip_id', p_trip_id, 'disembarking_time', trip.disembarking_time)
        INTO refusal, message, detail;
        trip := NULL;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM stations s WHERE s.station_id = p_disembarking_station_id) THEN
        SELECT 'TRN05', 'station not found', jsonb_build_object('station_id', p_disembarking_station_id)
        INTO refusal, message, detail;
        trip := NULL;
        RETURN;
    END IF;
    UPDATE trips t SET disembarking_station_id = p_disembarking_station_id,
                       disembarking_time = greatest(clock_timestamp(), t.boarding_time)
    WHERE t.trip_id = p_trip_id RETURNING t.* INTO trip;
END $$;

CREATE OR REPLACE FUNCTION end_trips(p_trip_ids bigint[], p_disembarking_station_ids integer[])
RETURNS TABLE (item integer, refusal text, message text, detail jsonb, trip trips)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Lock the trips in trip_id order, then the counters of their boarding stations' localities.
    PERFORM lock_trip_counters(array_agg(coalesce(s.location_id, 0)))
    FROM (SELECT t.boarding_station_id FROM trips t WHERE t.trip_id = ANY (p_trip_ids)
          ORDER BY t.trip_id FOR NO KEY UPDATE) locked
    LEFT JOIN stations s ON s.station_id = locked.boarding_station_id;
    FOR i IN 1 .. cardinality(p_trip_ids) LOOP
        RETURN QUERY SELECT i, e.* FROM end_one(p_trip_ids[i], p_disembarking_station_ids[i]) e;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION end_trip(p_trip_id bigint, p_disembarking_station_id integer)
RETURNS SETOF trips LANGUAGE plpgsql AS $$
DECLARE
    v_done record;
BEGIN
    SELECT * INTO v_done FROM end_trips(ARRAY[p_trip_id], ARRAY[p_disembarking_station_id]);
    IF v_done.refusal IS NOT NULL THEN
        PERFORM refuse(v_done.refusal, v_done.message, v_done.detail);
    END IF;
    RETURN NEXT v_done.trip;
END $$;

-- ---------------------------------------------------------------- other writes
CREATE OR REPLACE FUNCTION create_user(
    p_first_name text, p_last_name text, p_email text, p_id_number text,
    p_contact_number text, p_gender text, p_date_of_birth date,
    p_residential_address text, p_city_of_birth text)
RETURNS SETOF users LANGUAGE sql AS $$
    INSERT INTO users (first_name, last_name, email, id_number, contact_number, gender,
                       date_of_birth, residential_address, city_of_birth)
    VALUES (p_first_name, p_last_name, p_email, p_id_number, p_contact_number, p_gender,
            p_date_of_birth, p_residential_address, p_city_of_birth)
    RETURNING *
$$;

-- Issue a card with balance 0; without a number, the next from card_number_seq that no card
-- issued by hand (a migrated card, say) already holds.
CREATE OR REPLACE FUNCTION issue_card(p_user_id bigint, p_card_number text)
RETURNS SETOF cards LANGUAGE plpgsql AS $$
DECLARE
    v_card_number text := p_card_number;
BEGIN
    IF NOT EXISTS (SELECT FROM users u WHERE u.user_id = p_user_id) THEN
        PERFORM refuse('TRN03', 'user not found', jsonb_build_object('user_id', p_user_id));
    END IF;
    WHILE v_card_number IS NULL LOOP
        v_card_number := nextval('card_number_seq')::text;
        IF EXISTS (SELECT FROM cards c WHERE c.card_number = v_card_number) THEN
            v_card_number := NULL;
        END IF;
    END LOOP;
    RETURN QUERY
    INSERT INTO cards (card_number, user_id) VALUES (v_card_number, p_user_id)
    RETURNING *;
END $$;

CREATE OR REPLACE FUNCTION set_card_status(p_card_id bigint, p_status text)
RETURNS SETOF cards LANGUAGE plpgsql AS $$
DECLARE
    v_card cards;
BEGIN
    UPDATE cards c SET status = p_status, update_date = clock_timestamp()
    WHERE c.card_id = p_card_id RETURNING * INTO v_card;
    IF NOT FOUND THEN
        PERFORM refuse('TRN01', 'card not found', jsonb_build_object('card_id', p_card_id));
    END IF;
    RETURN NEXT v_card;
END $$;

-- Register a write token (only its sha256 is kept) and return its id. Every API instance
-- hears of it (LISTEN write_tokens, `created:<id>:<sha256 hex>`): it forgets the tokens it
-- cached as unknown, and knows this one as live.
CREATE OR REPLACE FUNCTION register_token(p_token_hash bytea, p_role text, p_label text,
                                          p_recharge_point_id integer DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_token_id integer;
BEGIN
    INSERT INTO write_tokens AS w (token_hash, role, label, recharge_point_id)
    VALUES (p_token_hash, p_role, p_label, p_recharge_point_id)
    ON CONFLICT (token_hash) DO UPDATE
        SET role = excluded.role, label = excluded.label,
            recharge_point_id = excluded.recharge_point_id, revoked_at = NULL
    RETURNING w.token_id INTO v_token_id;
    PERFORM pg_notify('write_tokens', 'created:' || v_token_id || ':' || encode(p_token_hash, 'hex'));
    RETURN v_token_id;
END $$;

-- A new token (only its sha256 is kept), heard of as register_token's; the API has checked that a recharge point's token,
-- and only it, names a point.
CREATE OR REPLACE FUNCTION create_token(p_token_hash bytea, p_role text, p_label text,
                                        p_recharge_point_id integer)
RETURNS SETOF write_tokens LANGUAGE plpgsql AS $$
DECLARE
    v_token write_tokens;
BEGIN
    IF p_recharge_point_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM recharge_points p WHERE p.recharge_point_id = p_recharge_point_id) THEN
        PERFORM refuse('TRN06', 'recharge point not found',
                       jsonb_build_object('recharge_point_id', p_recharge_point_id));
    END IF;
    INSERT INTO write_tokens (token_hash, role, label, recharge_point_id)
    VALUES (p_token_hash, p_role, p_label, p_recharge_point_id)
    RETURNING * INTO v_token;
    PERFORM pg_notify('write_tokens', 'created:' || v_token.token_id || ':' || encode(p_token_hash, 'hex'));
    RETURN NEXT v_token;
END $$;

-- Revoke a live token and tell every API instance at once (LISTEN write_tokens). Revocations
-- take turns (the advisory lock), and each statement after it sees those committed before, so
-- two admins revoking each other's token concurrently cannot leave no admin token.
CREATE OR REPLACE FUNCTION revoke_token(p_token_id integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_role text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('revoke_token', 0));
    SELECT w.role INTO v_role FROM write_tokens w WHERE w.token_id = p_token_id AND w.revoked_at IS NULL;
    IF NOT FOUND THEN
        PERFORM refuse('TRN07', 'token not found', jsonb_build_object('token_id', p_token_id));
    END IF;
    IF v_role = 'admin' AND NOT EXISTS (SELECT FROM write_tokens w WHERE w.role = 'admin'
                                        AND w.revoked_at IS NULL AND w.token_id <> p_token_id) THEN
        PERFORM refuse('TRC05', 'the last admin token cannot be revoked',
                       jsonb_build_object('token_id', p_token_id));
    END IF;
    UPDATE write_tokens w SET revoked_at = now() WHERE w.token_id = p_token_id;
    PERFORM pg_notify('write_tokens', p_token_id::text);
END $$;

-- Move the cache to a new namespace and tell every API instance (LISTEN cache_epoch).
CREATE OR REPLACE FUNCTION bump_cache_epoch() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
BEGIN
    UPDATE cache_state SET epoch = epoch + 1 RETURNING epoch INTO v_epoch;
    PERFORM pg_notify('cache_epoch', v_epoch::text);
    RETURN v_epoch;
END $$;

-- Idempotency records older than the retention period are forgotten, at most p_batch per
-- call (short transactions under the API's statement timeout; the caller repeats).
DROP FUNCTION IF EXISTS prune_idempotency_keys(interval);  -- the release before batches
CREATE OR REPLACE FUNCTION prune_idempotency_keys(p_retention interval, p_batch integer DEFAULT 5000)
RETURNS bigint LANGUAGE sql AS $$
    WITH pruned AS (
        DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys WHERE created_at < now() - p_retention LIMIT p_batch))
        RETURNING 1)
    SELECT count(*) FROM pruned
$$;
