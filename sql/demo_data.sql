-- Demo data generated inside PostgreSQL, by scale. load_demo_data(N) adds a Bogotá network
-- (concessionaires, depots, vehicles, drivers, ~175 stations, ~140 routes, ~90 recharge points,
-- on the localities of reference.sql) and N x 8,000 users holding N x 10,000 cards, with
-- N x 100,000 trips over the last 180 days and the recharges that paid for them.
--
-- This file only defines the function (applied with the schema); db.load_demo_data calls it
-- once, on a database without users or cards, in one transaction. It bulk-loads with
-- session_replication_role = replica (no FK checks, no counter triggers: a superuser's right)
-- and then recomputes the counters with refresh_counters().
--
-- How the history stays consistent without a loop over cards:
--   * each card is allotted a number of trips (they add up to exactly N x 100,000), some of
--     them second legs of a journey. Journeys take distinct half-day slots in increasing order,
--     so a journey's first leg boards hours after the card's previous boarding and its second
--     leg within 90 minutes of the first, on another route: board_trip's transfer rule;
--   * trip ids follow (card, boarding time), so a second leg knows its first leg's id
--     (transfer_group_id), and both indexes on trips are filled in order;
--   * a recharge precedes every trip that takes the card's cumulative fares past a multiple of
--     the card's recharge step, so the balance never goes below zero, and the card's balance
--     is computed from the recharges and fares actually inserted.

-- Drops a table's indexes other than its primary key and returns the statements that create
-- them again: a bulk load then builds each index once, by sorting, instead of row by row.
CREATE OR REPLACE FUNCTION drop_secondary_indexes(p_table regclass) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_index record;
    v_recreate text[] := '{}';
BEGIN
    FOR v_index IN
        SELECT i.indexrelid::regclass AS index_name, con.conname AS constraint_name,
               pg_get_indexdef(i.indexrelid) AS index_definition, pg_get_constraintdef(con.oid) AS constraint_definition
        FROM pg_index i
        LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                   AND con.contype IN ('u', 'x')
        WHERE i.indrelid = p_table AND NOT i.indisprimary
    LOOP
        IF v_index.constraint_name IS NULL THEN
            EXECUTE format('DROP INDEX %s', v_index.index_name);
            v_recreate := v_recreate || v_index.index_definition;
        ELSE
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, v_index.constraint_name);
            v_recreate := v_recreate || format('ALTER TABLE %s ADD CONSTRAINT %I %s', p_table,
                                               v_index.constraint_name, v_index.constraint_definition);
        END IF;
    END LOOP;
    RETURN v_recreate;
END $$;

CREATE OR REPLACE FUNCTION load_demo_data(p_scale integer) RETURNS void
LANGUAGE plpgsql
SET work_mem = '256MB'       -- the per-card window and aggregates over all trips sort in memory
SET enable_memoize = off     -- a cached lateral subquery would give the next card the same draws
SET maintenance_work_mem = '256MB'  -- index builds after the load
AS $$
DECLARE
    v_user_count constant bigint := 8000::bigint * p_scale;
    v_card_count constant bigint := 10000::bigint * p_scale;
    v_trip_count constant bigint := 100000::bigint * p_scale;
    -- Half-day slots (morning, evening) in Bogotá's time: the last 360 that have ended, so the
    -- history reaches into today (the dashboard's last 24 hours) and never past now. Slot k is
    -- half-day k + v_slot_offset from v_history_start (offset 1 after noon: slot 0 is an evening).
    v_slot_count constant integer := 360;
    v_history_start constant timestamptz :=
        (date_trunc('day', now() AT TIME ZONE 'America/Bogota') - interval '180 days') AT TIME ZONE 'America/Bogota';
    v_slot_offset constant integer := (extract(hour FROM now() AT TIME ZONE 'America/Bogota') >= 12)::integer;
    v_replication_role constant text := current_setting('session_replication_role');
    v_female_names constant text[] := ARRAY[
        'María', 'Ana', 'Luisa', 'Carolina', 'Daniela', 'Valentina', 'Camila', 'Laura', 'Paula',
        'Natalia', 'Andrea', 'Diana', 'Juliana', 'Sofía', 'Isabella', 'Mariana', 'Gabriela',
        'Catalina', 'Alejandra', 'Sandra', 'Claudia', 'Liliana', 'Marcela', 'Paola', 'Adriana',
        'Angélica', 'Yolanda', 'Luz', 'Martha', 'Gloria', 'Sara', 'Manuela', 'Lina', 'Viviana',
        'Jimena', 'Tatiana', 'Melissa', 'Lorena'];
    v_male_names constant text[] := ARRAY[
        'Juan', 'Carlos', 'Andrés', 'Luis', 'Jorge', 'José', 'Santiago', 'Sebastián', 'Daniel',
        'David', 'Felipe', 'Alejandro', 'Diego', 'Camilo', 'Nicolás', 'Mateo', 'Samuel', 'Julián',
        'Óscar', 'Fabio', 'Hernán', 'Jairo', 'Álvaro', 'Ricardo', 'Mauricio', 'Fernando', 'Javier',
        'Cristian', 'Jhon', 'Édgar', 'William', 'Germán', 'Esteban', 'Miguel', 'Gustavo', 'Iván',
        'Wilson', 'Brayan'];
    v_surnames constant text[] := ARRAY[
        'Rodríguez', 'Gómez', 'González', 'Martínez', 'García', 'López', 'Hernández', 'Sánchez',
        'Ramírez', 'Pérez', 'Díaz', 'Muñoz', 'Rojas', 'Moreno', 'Jiménez', 'Vargas', 'Torres',
        'Ramos', 'Castro', 'Suárez', 'Gutiérrez', 'Ruiz', 'Ortiz', 'Álvarez', 'Castillo', 'Romero',
        'Herrera', 'Valencia', 'Quintero', 'Mejía', 'Cárdenas', 'Restrepo', 'Ospina', 'Londoño',
        'Cruz', 'Parra', 'Guerrero', 'Medina', 'Rincón', 'Bermúdez', 'Cortés', 'Pineda', 'Beltrán',
        'Salazar', 'Cifuentes', 'Forero', 'Garzón', 'Pulido', 'Acosta', 'Velásquez', 'Buitrago',
        'Camacho', 'Zambrano', 'Montoya', 'Caicedo', 'Arias', 'Bautista', 'Niño', 'Vega', 'Peña'];
    v_birth_cities constant text[] := ARRAY[
        'Medellín', 'Cali', 'Barranquilla', 'Bucaramanga', 'Tunja', 'Ibagué', 'Villavicencio',
        'Neiva', 'Pasto', 'Cartagena', 'Manizales', 'Pereira', 'Soacha', 'Girardot', 'Zipaquirá',
        'Fusagasugá', 'Cúcuta', 'Armenia', 'Popayán', 'Santa Marta', 'Sogamoso', 'Duitama'];
    -- Weighted by repetition: most accounts are on the big free providers.
    v_email_domains constant text[] := ARRAY[
        'gmail.com', 'gmail.com', 'gmail.com', 'gmail.com', 'gmail.com', 'hotmail.com', 'hotmail.com',
        'outlook.com', 'yahoo.es', 'yahoo.com'];
    v_street_kinds constant text[] := ARRAY[
        'Calle', 'Calle', 'Carrera', 'Carrera', 'Transversal', 'Diagonal', 'Avenida Calle', 'Avenida Carrera'];
    v_urban_localities text[];
    v_recharge_points integer[];
    v_route_count integer;
    v_trip_indexes text[];
    v_other_indexes text[];
    v_statement text;
BEGIN
    IF p_scale IS NULL OR p_scale < 1 THEN
        RAISE EXCEPTION 'demo data scale must be a positive integer, not %', p_scale
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Users and cards get the ids 1..n: they must be the first ones.
    IF EXISTS (SELECT FROM users) OR EXISTS (SELECT FROM cards) THEN
        RAISE EXCEPTION 'demo data is loaded only into a database without users and cards'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- No FK checks and no counter triggers while loading; refresh_counters() runs at the end.
    PERFORM set_config('session_replication_role', 'replica', true);
    PERFORM setseed(0.2026);  -- the same demo data on every machine
    -- The big tables are loaded without their secondary indexes (holding them exclusively
    -- until commit); trips get theirs back first, for the recharges' pass over each card.
    v_trip_indexes := drop_secondary_indexes('trips');
    v_other_indexes := drop_secondary_indexes('users') || drop_secondary_indexes('cards')
                       || drop_secondary_indexes('recharges');

    -- ------------------------------------------------------------ fares, as board_trip picks them
    CREATE TEMP TABLE demo_fare ON COMMIT DROP AS
    SELECT f.is_transfer, f.onto_cable, in_force.fare_id, in_force.value
    FROM (VALUES (false, false, 'STANDARD_SITP'), (false, true, 'STANDARD_CABLE'),
                 (true, false, 'TRANSFER_200_COST'), (true, true, 'TRANSFER_0_COST'))
         AS f(is_transfer, onto_cable, fare_type)
    CROSS JOIN LATERAL fare_in_force(f.fare_type) AS in_force;

    -- ------------------------------------------------------------ localities and their barrios
    CREATE TEMP TABLE demo_locality ON COMMIT DROP AS
    SELECT l.location_id, l.name, c.latitude, c.longitude, c.barrios, l.name <> 'Sumapaz' AS urban
    FROM (VALUES
        ('Usaquén', 4.7300, -74.0350, ARRAY['Cedritos', 'Verbenal']),
        ('Chapinero', 4.6500, -74.0600, ARRAY['Chicó Norte', 'Chapinero Alto']),
        ('Santa Fe', 4.6080, -74.0680, ARRAY['La Macarena', 'Las Cruces']),
        ('San Cristóbal', 4.5580, -74.0850, ARRAY['San Blas', 'La Gloria']),
        ('Usme', 4.5050, -74.1100, ARRAY['Santa Librada', 'Danubio']),
        ('Tunjuelito', 4.5780, -74.1350, ARRAY['Abraham Lincoln', 'San Carlos']),
        ('Bosa', 4.6150, -74.1900, ARRAY['Bosa Centro', 'El Recreo']),
        ('Kennedy', 4.6300, -74.1550, ARRAY['Timiza', 'Castilla']),
        ('Fontibón', 4.6750, -74.1450, ARRAY['Fontibón Centro', 'Hayuelos']),
        ('Engativá', 4.7050, -74.1100, ARRAY['Álamos', 'Bolivia']),
        ('Suba', 4.7450, -74.0850, ARRAY['Suba Centro', 'Lisboa']),
        ('Barrios Unidos', 4.6680, -74.0750, ARRAY['Doce de Octubre', 'Los Alcázares']),
        ('Teusaquillo', 4.6420, -74.0850, ARRAY['Galerías', 'La Soledad']),
        ('Los Mártires', 4.6080, -74.0900, ARRAY['Voto Nacional', 'La Estanzuela']),
        ('Antonio Nariño', 4.5880, -74.1000, ARRAY['Ciudad Berna', 'Santander']),
        ('Puente Aranda', 4.6200, -74.1150, ARRAY['Ciudad Montes', 'Galán']),
        ('La Candelaria', 4.5960, -74.0730, ARRAY['Egipto', 'Belén']),
        ('Rafael Uribe Uribe', 4.5650, -74.1150, ARRAY['Marruecos', 'Diana Turbay']),
        ('Ciudad Bolívar', 4.5400, -74.1500, ARRAY['Lucero', 'Arborizadora Alta']),
        ('Sumapaz', 4.1800, -74.1600, ARRAY['Nazareth'])
    ) AS c(name, latitude, longitude, barrios)
    JOIN locations l USING (name);
    SELECT array_agg(name ORDER BY location_id) INTO v_urban_localities FROM demo_locality WHERE urban;

    -- ------------------------------------------------------------ stations
    -- Trunk corridors and cable lines, each from its first stop to its last; a station's
    -- position along the line gives its coordinates, and the nearest locality centre its locality
    -- (cable lines climb from the valley into the one they serve, so theirs is given).
    CREATE TEMP TABLE demo_corridor ON COMMIT DROP AS
    SELECT * FROM (VALUES
        (1, 'A', 'Av. Caracas', 'TRUNK', NULL, 4.6020, -74.0780, 4.6620, -74.0620, ARRAY[
            'Av. Jiménez', 'Calle 19', 'Calle 22', 'Calle 26', 'Calle 34', 'Av. 39', 'Calle 45',
            'Marly', 'Calle 57', 'Calle 63', 'Flores', 'Calle 72', 'Calle 76']),
        (2, 'B', 'Autopista Norte', 'TRUNK', NULL, 4.6670, -74.0590, 4.7546, -74.0463, ARRAY[
            'Héroes', 'Calle 85', 'Virrey', 'Calle 100', 'Calle 106', 'Pepe Sierra', 'Calle 127',
            'Prado', 'Alcalá', 'Calle 142', 'Calle 146', 'Mazurén', 'Calle 161', 'Toberín', 'Portal Norte']),
        (3, 'C', 'Av. Suba', 'TRUNK', NULL, 4.6700, -74.0690, 4.7467, -74.0960, ARRAY[
            'San Martín', 'Rionegro', 'Suba - Calle 95', 'Suba - Calle 100', 'Puentelargo', 'Shaio',
            'Humedal Córdoba', 'Niza - Calle 127', 'Suba - Av. Boyacá', 'Gratamira', '21 Ángeles',
            'La Campiña', 'Portal Suba']),
        (4, 'D', 'Av. Calle 80', 'TRUNK', NULL, 4.6720, -74.0730, 4.7107, -74.1118, ARRAY[
            'Polo', 'Carrera 47', 'Carrera 53', 'Av. 68 - Calle 80', 'Ferias', 'Boyacá',
            'Minuto de Dios', 'Granja - Carrera 77', 'Av. Ciudad de Cali', 'Carrera 90', 'Quirigua', 'Portal 80']),
        (5, 'E', 'Av. NQS', 'TRUNK', NULL, 4.6660, -74.0770, 4.6130, -74.0940, ARRAY[
            'Escuela Militar', 'NQS - Calle 75', 'Av. Chile', 'Simón Bolívar', 'Movistar Arena',
            'Campín', 'U. Nacional', 'Av. El Dorado', 'CAD', 'Paloquemao', 'Ricaurte']),
        (6, 'F', 'Av. Américas', 'TRUNK', NULL, 4.6070, -74.0850, 4.6290, -74.2045, ARRAY[
            'De la Sabana', 'CDS - Carrera 32', 'Zona Industrial', 'Puente Aranda', 'Pradera',
            'Distrito Grafiti', 'Marsella', 'Mundo Aventura', 'Biblioteca Tintal', 'Transversal 86',
            'Banderas', 'Patio Bonito', 'Portal Américas']),
        (7, 'G', 'Av. NQS Sur', 'TRUNK', NULL, 4.6050, -74.0950, 4.5940, -74.1720, ARRAY[
            'Comuneros', 'Santa Isabel', 'Sena', 'NQS - Calle 30 Sur', 'NQS - Calle 38A Sur',
            'General Santander', 'Alquería', 'Venecia', 'Sevillana', 'Madelena', 'Perdomo', 'Portal Sur']),
        (8, 'H', 'Av. Caracas Sur', 'TRUNK', NULL, 4.5975, -74.0830, 4.5317, -74.1167, ARRAY[
            'Tercer Milenio', 'Hospital', 'Hortúa', 'Nariño', 'Fucha', 'Restrepo', 'Olaya', 'Quiroga',
            'Calle 40 Sur', 'Santa Lucía', 'Socorro', 'Consuelo', 'Molinos', 'Portal Usme']),
        (9, 'H', 'Troncal Tunal', 'TRUNK', NULL, 4.5570, -74.1037, 4.5772, -74.1305, ARRAY[
            'Calle 40 Sur', 'Biblioteca', 'Parque', 'Portal Tunal']),
        (10, 'J', 'Eje Ambiental', 'TRUNK', NULL, 4.6020, -74.0780, 4.6030, -74.0660, ARRAY[
            'Av. Jiménez', 'Museo del Oro', 'Las Aguas', 'Universidades']),
        (11, 'K', 'Av. Calle 26', 'TRUNK', NULL, 4.6160, -74.0720, 4.6826, -74.1195, ARRAY[
            'Centro Memoria', 'Concejo de Bogotá', 'Ciudad Universitaria', 'Corferias', 'Quinta Paredes',
            'Gobernación', 'CAN', 'Salitre - El Greco', 'El Tiempo - Maloka', 'Av. Rojas', 'Normandía',
            'Modelia', 'Portal Eldorado']),
        (12, 'L', 'Carrera 10', 'TRUNK', NULL, 4.6060, -74.0780, 4.5717, -74.0935, ARRAY[
            'San Victorino', 'Las Nieves', 'San Bernardo', 'Policarpa', 'Hospitales', 'Bicentenario',
            'Ciudad Jardín', 'Country Sur', 'Av. Primero de Mayo', 'Portal 20 de Julio']),
        (13, NULL, 'TransMiCable Ciudad Bolívar', 'CABLE', 'Ciudad Bolívar', 4.5772, -74.1305, 4.5560, -74.1520, ARRAY[
            'Portal Tunal', 'Juan Pablo II', 'Manitas', 'Mirador del Paraíso']),
        (14, NULL, 'TransMiCable San Cristóbal', 'CABLE', 'San Cristóbal', 4.5717, -74.0935, 4.5560, -74.0760, ARRAY[
            'Portal 20 de Julio', 'La Victoria', 'Altamira'])
    ) AS c(corridor_order, route_letter, street, kind, locality, from_latitude, from_longitude,
           to_latitude, to_longitude, stop_names);

    CREATE TEMP TABLE demo_station ON COMMIT DROP AS
    WITH corridor_station AS (  -- a station shared by two lines belongs to the first
        SELECT DISTINCT ON (s.name) s.name, c.corridor_order, s.position, c.street, c.locality,
               CASE WHEN c.kind = 'CABLE' THEN 'CABLE'
                    WHEN s.name LIKE 'Portal %' THEN 'PORTAL' ELSE 'TRUNK' END AS station_type,
               c.from_latitude + (c.to_latitude - c.from_latitude) * (s.position - 1) / (cardinality(c.stop_names) - 1)
                   + (random() - 0.5) * 0.0012 AS latitude,
               c.from_longitude + (c.to_longitude - c.from_longitude) * (s.position - 1) / (cardinality(c.stop_names) - 1)
                   + (random() - 0.5) * 0.0012 AS longitude
        FROM demo_corridor c CROSS JOIN LATERAL unnest(c.stop_names) WITH ORDINALITY AS s(name, position)
        ORDER BY s.name, c.corridor_order, s.position
    ), placed AS (
        SELECT cs.name, cs.station_type, cs.corridor_order, cs.position, nearest.location_id,
               cs.latitude, cs.longitude, format('%s, estación %s', cs.street, cs.name) AS address
        FROM corridor_station cs
        CROSS JOIN LATERAL (
            SELECT l.location_id FROM demo_locality l WHERE l.urban
            ORDER BY (l.name = cs.locality) IS TRUE DESC, (l.latitude - cs.latitude) ^ 2 + (l.longitude - cs.longitude) ^ 2
            LIMIT 1
        ) AS nearest
        UNION ALL  -- zonal stops: in every locality's barrios, on a numbered street
        SELECT b.name, 'ZONAL', 100 + l.location_id, b.position, l.location_id,
               l.latitude + (random() - 0.5) * 0.02, l.longitude + (random() - 0.5) * 0.02,
               format('%s %s # %s-%s, %s', v_street_kinds[1 + floor(random() * cardinality(v_street_kinds))::int],
                      1 + floor(random() * 170)::int, 1 + floor(random() * 120)::int,
                      1 + floor(random() * 98)::int, l.name)
        FROM demo_locality l CROSS JOIN LATERAL unnest(l.barrios) WITH ORDINALITY AS b(name, position)
    )
    SELECT p.name, p.station_type, p.location_id, round(p.latitude::numeric, 6) AS latitude,
           round(p.longitude::numeric, 6) AS longitude, p.address,
           format('%s%s', CASE p.station_type WHEN 'CABLE' THEN 'TC' WHEN 'ZONAL' THEN 'SITP' ELSE 'TM' END,
                  lpad(row_number() OVER (PARTITION BY p.station_type IN ('TRUNK', 'PORTAL'), p.station_type = 'CABLE'
                                          ORDER BY p.corridor_order, p.position)::text, 3, '0')) AS station_code,
           CASE p.station_type
               WHEN 'PORTAL' THEN 150 + 10 * floor(random() * 26)::int
               WHEN 'TRUNK' THEN CASE WHEN random() < 0.3 THEN 20 + 10 * floor(random() * 7)::int ELSE 0 END
               WHEN 'CABLE' THEN CASE WHEN random() < 0.5 THEN 10 + 10 * floor(random() * 4)::int ELSE 0 END
               ELSE 0 END AS cycle_parking_spots
    FROM placed p;

    INSERT INTO stations (name, station_code, station_type, address, location_id, latitude, longitude,
                          has_cycle_parking, cycle_parking_spots)
    SELECT name, station_code, station_type, address, location_id, latitude, longitude,
           cycle_parking_spots > 0, cycle_parking_spots
    FROM demo_station ORDER BY station_code
    ON CONFLICT (station_code) DO NOTHING;

    -- ------------------------------------------------------------ operators, depots, fleet, drivers
    -- Which kind of route each operator runs: trunk buses, zonal and feeder buses, cable cars.
    CREATE TEMP TABLE demo_operator ON COMMIT DROP AS
    SELECT o.name, o.kind, o.operator_order::int,
           (row_number() OVER (PARTITION BY o.kind ORDER BY o.operator_order) - 1)::int AS kind_rank,
           (count(*) OVER (PARTITION BY o.kind))::int AS kind_count,
           NULL::integer AS concessionaire_id, NULL::integer[] AS depots
    FROM unnest(ARRAY['Somos K S.A.', 'Transmasivo S.A.', 'Connexión Móvil S.A.S.', 'Gran Américas Usme S.A.S.',
                      'Bogotá Móvil Operación Sur S.A.S.', 'Sí18 Calle 80 S.A.S.', 'Consorcio Express S.A.S.',
                      'Masivo Capital S.A.S.', 'Gmovil S.A.S.', 'Organización Suma S.A.S.',
                      'Este Es Mi Bus S.A.S.', 'La Rolita Operadora Distrital S.A.S.', 'Cable Móvil Bogotá S.A.S.'],
                ARRAY['TRUNK', 'TRUNK', 'TRUNK', 'TRUNK', 'TRUNK', 'TRUNK', 'ZONAL', 'ZONAL', 'ZONAL',
                      'ZONAL', 'ZONAL', 'ZONAL', 'CABLE'])
         WITH ORDINALITY AS o(name, kind, operator_order);

    INSERT INTO concessionaires (name, nit, contact_email, contact_number)
    SELECT o.name, format('900%s-%s', lpad((o.operator_order * 104729 % 999983)::text, 6, '0'), o.operator_order % 10),
           format('contacto@%s.com.co', lower(regexp_replace(translate(regexp_replace(o.name, ' S\.A\.(S\.)?$', ''),
                                                                        'áéíóúÁÉÍÓÚñÑ', 'aeiouAEIOUnN'), '[^A-Za-z0-9]', '', 'g'))),
           format('+57 601 %s', 3000000 + o.operator_order * 611953 % 6999999)
    FROM demo_operator o ORDER BY o.operator_order
    ON CONFLICT (name) DO NOTHING;

    INSERT INTO depots (name, address, location_id, concessionaire_id, capacity)
    SELECT d.name, format('%s %s # %s-%s', v_street_kinds[1 + floor(random() * cardinality(v_street_kinds))::int],
                          1 + floor(random() * 170)::int, 1 + floor(random() * 120)::int, 1 + floor(random() * 98)::int),
           l.location_id, c.concessionaire_id, d.capacity
    FROM (VALUES
        ('Patio Portal Norte', 'Usaquén', 'Somos K S.A.', 320),
        ('Patio Portal Suba', 'Suba', 'Transmasivo S.A.', 280),
        ('Patio Portal 80', 'Engativá', 'Sí18 Calle 80 S.A.S.', 260),
        ('Patio Portal Eldorado', 'Fontibón', 'Connexión Móvil S.A.S.', 240),
        ('Patio Portal Américas', 'Kennedy', 'Gran Américas Usme S.A.S.', 300),
        ('Patio Portal Sur', 'Bosa', 'Bogotá Móvil Operación Sur S.A.S.', 220),
        ('Patio Portal Usme', 'Usme', 'Gran Américas Usme S.A.S.', 260),
        ('Patio Portal Tunal', 'Tunjuelito', 'Somos K S.A.', 180),
        ('Patio Fontibón', 'Fontibón', 'Consorcio Express S.A.S.', 200),
        ('Patio Álamos', 'Engativá', 'Masivo Capital S.A.S.', 190),
        ('Patio Tintal', 'Kennedy', 'Gmovil S.A.S.', 210),
        ('Patio Bosa El Recreo', 'Bosa', 'Organización Suma S.A.S.', 170),
        ('Patio Usaquén Calle 170', 'Usaquén', 'Consorcio Express S.A.S.', 160),
        ('Patio San Cristóbal', 'San Cristóbal', 'Este Es Mi Bus S.A.S.', 150),
        ('Patio Ciudad Bolívar', 'Ciudad Bolívar', 'La Rolita Operadora Distrital S.A.S.', 140),
        ('Estación de mantenimiento TransMiCable', 'Ciudad Bolívar', 'Cable Móvil Bogotá S.A.S.', 170)
    ) AS d(name, locality, concessionaire, capacity)
    JOIN locations l ON l.name = d.locality
    JOIN concessionaires c ON c.name = d.concessionaire
    ON CONFLICT (name) DO NOTHING;

    UPDATE demo_operator o
    SET concessionaire_id = c.concessionaire_id,
        depots = ARRAY(SELECT d.depot_id FROM depots d WHERE d.concessionaire_id = c.concessionaire_id)
    FROM concessionaires c WHERE c.name = o.name;

    -- 100 vehicles per operator; plates as Bogotá's public-service ones (S/T/V/W + 2 letters + 3
    -- digits), unique because v -> 7v mod 2704 is a permutation of the letter triples.
    INSERT INTO vehicles (plate_number, vehicle_type, capacity, concessionaire_id, depot_id, is_active)
    SELECT format('%s%s%s-%s', (ARRAY['S', 'T', 'V', 'W'])[1 + x.letters / 676], chr(65 + x.letters / 26 % 26),
                  chr(65 + x.letters % 26), lpad((x.v * 37 % 1000)::text, 3, '0')),
           m.vehicle_type, m.capacity, x.concessionaire_id,
           x.depots[1 + floor(x.depot_draw * cardinality(x.depots))::int], x.active_draw < 0.97
    FROM (
        SELECT v, v * 7 % 2704 AS letters, o.concessionaire_id, o.kind, o.depots,
               random() AS model_draw, random() AS depot_draw, random() AS active_draw
        FROM generate_series(1, 1300) AS v
        JOIN demo_operator o ON o.operator_order = 1 + (v - 1) % 13
    ) AS x
    JOIN (VALUES
        ('TRUNK', 'Articulado', 160, 0.0, 0.7), ('TRUNK', 'Biarticulado', 250, 0.7, 1.0),
        ('ZONAL', 'Padrón', 80, 0.0, 0.5), ('ZONAL', 'Busetón', 50, 0.5, 0.8),
        ('ZONAL', 'Padrón eléctrico', 80, 0.8, 1.0), ('CABLE', 'Cabina TransMiCable', 10, 0.0, 1.0)
    ) AS m(kind, vehicle_type, capacity, from_draw, to_draw)
      ON m.kind = x.kind AND x.model_draw >= m.from_draw AND x.model_draw < m.to_draw
    ORDER BY x.v
    ON CONFLICT (plate_number) DO NOTHING;

    -- Cédulas of 8 digits, unique because d -> 7919d mod 999983 (a prime) is a permutation.
    INSERT INTO drivers (first_name, last_name, id_number, license_number, concessionaire_id, hire_date, is_active)
    SELECT CASE WHEN x.female_draw < 0.15 THEN v_female_names[1 + floor(x.name_draw * cardinality(v_female_names))::int]
                ELSE v_male_names[1 + floor(x.name_draw * cardinality(v_male_names))::int] END,
           format('%s %s', v_surnames[1 + floor(x.surname_draw * cardinality(v_surnames))::int],
                  v_surnames[1 + floor(x.second_surname_draw * cardinality(v_surnames))::int]),
           x.id_number, x.id_number, x.concessionaire_id,
           current_date - floor(x.hired_draw * 5400)::int, x.active_draw < 0.95
    FROM (
        SELECT format('79%s', lpad((d * 7919 % 999983)::text, 6, '0')) AS id_number, o.concessionaire_id,
               random() AS female_draw, random() AS name_draw, random() AS surname_draw,
               random() AS second_surname_draw, random() AS hired_draw, random() AS active_draw
        FROM generate_series(1, 1600) AS d
        JOIN demo_operator o ON o.operator_order = 1 + (d - 1) % 13
    ) AS x
    ON CONFLICT (id_number) DO NOTHING;

    -- ------------------------------------------------------------ routes
    CREATE TEMP TABLE demo_route_plan (
        plan_order  integer GENERATED ALWAYS AS IDENTITY,
        route_code  text PRIMARY KEY,
        route_name  text NOT NULL,
        route_type  text NOT NULL,
        stop_codes  text[] NOT NULL
    ) ON COMMIT DROP;

    CREATE TEMP TABLE demo_corridor_stops ON COMMIT DROP AS
    SELECT c.corridor_order, c.route_letter, c.kind, c.street,
           array_agg(s.station_code ORDER BY u.position) AS outward,
           array_agg(s.station_code ORDER BY u.position DESC) AS inward
    FROM demo_corridor c
    CROSS JOIN LATERAL unnest(c.stop_names) WITH ORDINALITY AS u(name, position)
    JOIN demo_station s ON s.name = u.name AND s.station_type <> 'ZONAL'
    GROUP BY c.corridor_order, c.route_letter, c.kind, c.street;

    -- Trunk: from one corridor's end, through the centre, to another's; a third of them stop
    -- everywhere, the others are express services stopping at every second or third station.
    INSERT INTO demo_route_plan (route_code, route_name, route_type, stop_codes)
    SELECT format('%s%s', b.route_letter,
                  10 * row_number() OVER (PARTITION BY b.route_letter ORDER BY a.corridor_order) + a.express_every),
           '', 'TRUNK', stops.stop_codes
    FROM (SELECT *, 1 + corridor_order % 3 AS express_every FROM demo_corridor_stops) a
    JOIN demo_corridor_stops b ON b.corridor_order > a.corridor_order AND b.route_letter <> a.route_letter
    CROSS JOIN LATERAL (
        SELECT array_agg(d.code ORDER BY d.seq) AS stop_codes
        FROM (SELECT u.code, row_number() OVER (ORDER BY min(u.position)) AS seq, count(*) OVER () AS stop_count
              FROM unnest(a.inward || b.outward) WITH ORDINALITY AS u(code, position)
              GROUP BY u.code) AS d
        WHERE d.seq IN (1, d.stop_count) OR (d.seq - 1) % a.express_every = 0
    ) AS stops
    WHERE a.kind = 'TRUNK' AND b.kind = 'TRUNK'
    ORDER BY a.corridor_order, b.corridor_order;

    -- Zonal: between barrios of neighbouring localities, calling at the trunk stations nearest each end.
    INSERT INTO demo_route_plan (route_code, route_name, route_type, stop_codes)
    SELECT (100 + row_number() OVER (ORDER BY pair.from_code, pair.to_code))::text, '', 'ZONAL',
           ARRAY(SELECT u.code FROM unnest(ARRAY[pair.from_code, near_from.station_code, near_to.station_code, pair.to_code])
                                    WITH ORDINALITY AS u(code, position)
                 GROUP BY u.code ORDER BY min(u.position))
    FROM (
        SELECT DISTINCT least(a.station_code, b.station_code) AS from_code, greatest(a.station_code, b.station_code) AS to_code
        FROM demo_station a
        CROSS JOIN LATERAL (
            SELECT z.station_code FROM demo_station z
            WHERE z.station_type = 'ZONAL' AND z.location_id <> a.location_id
            ORDER BY (z.latitude - a.latitude) ^ 2 + (z.longitude - a.longitude) ^ 2 LIMIT 2
        ) AS b
        WHERE a.station_type = 'ZONAL'
    ) AS pair
    JOIN demo_station f ON f.station_code = pair.from_code
    JOIN demo_station t ON t.station_code = pair.to_code
    CROSS JOIN LATERAL (
        SELECT s.station_code FROM demo_station s WHERE s.station_type IN ('TRUNK', 'PORTAL')
        ORDER BY (s.latitude - f.latitude) ^ 2 + (s.longitude - f.longitude) ^ 2 LIMIT 1) AS near_from
    CROSS JOIN LATERAL (
        SELECT s.station_code FROM demo_station s WHERE s.station_type IN ('TRUNK', 'PORTAL')
        ORDER BY (s.latitude - t.latitude) ^ 2 + (s.longitude - t.longitude) ^ 2 LIMIT 1) AS near_to
    ORDER BY pair.from_code, pair.to_code;

    -- Feeders: from each portal to the three nearest barrios, numbered "portal-feeder" as TransMilenio does.
    INSERT INTO demo_route_plan (route_code, route_name, route_type, stop_codes)
    SELECT format('%s-%s', p.portal_number, z.feeder_number), '', 'FEEDER', ARRAY[p.station_code, z.station_code]
    FROM (SELECT s.*, row_number() OVER (ORDER BY s.station_code) AS portal_number
          FROM demo_station s WHERE s.station_type = 'PORTAL') AS p
    CROSS JOIN LATERAL (
        SELECT z.station_code, row_number() OVER (ORDER BY (z.latitude - p.latitude) ^ 2 + (z.longitude - p.longitude) ^ 2) AS feeder_number
        FROM demo_station z WHERE z.station_type = 'ZONAL'
        ORDER BY (z.latitude - p.latitude) ^ 2 + (z.longitude - p.longitude) ^ 2 LIMIT 3
    ) AS z
    ORDER BY p.portal_number, z.feeder_number;

    INSERT INTO demo_route_plan (route_code, route_name, route_type, stop_codes)
    SELECT format('TMC%s', row_number() OVER (ORDER BY corridor_order)), street, 'CABLE', outward
    FROM demo_corridor_stops WHERE kind = 'CABLE'
    ORDER BY corridor_order;

    -- Every bus route is named after its ends, as on TransMilenio's maps.
    UPDATE demo_route_plan p SET route_name = format('%s - %s', origin.name, destination.name)
    FROM demo_station origin, demo_station destination
    WHERE p.route_name = '' AND origin.station_code = p.stop_codes[1]
      AND destination.station_code = p.stop_codes[cardinality(p.stop_codes)];

    -- A route already there (a database whose users were deleted) is kept with its stops.
    INSERT INTO routes (route_code, route_name, route_type, origin_station_id, destination_station_id, concessionaire_id)
    SELECT p.route_code, p.route_name, p.route_type, origin.station_id, destination.station_id, o.concessionaire_id
    FROM demo_route_plan p
    JOIN stations origin ON origin.station_code = p.stop_codes[1]
    JOIN stations destination ON destination.station_code = p.stop_codes[cardinality(p.stop_codes)]
    JOIN demo_operator o ON o.kind = CASE p.route_type WHEN 'FEEDER' THEN 'ZONAL' ELSE p.route_type END
                        AND o.kind_rank = p.plan_order % o.kind_count
    ORDER BY p.plan_order
    ON CONFLICT (route_code) DO NOTHING;

    INSERT INTO intermediate_stations (route_id, station_id, sequence_order)
    SELECT r.route_id, s.station_id, u.sequence_order
    FROM demo_route_plan p
    JOIN routes r USING (route_code)
    CROSS JOIN LATERAL unnest(p.stop_codes) WITH ORDINALITY AS u(code, sequence_order)
    JOIN stations s ON s.station_code = u.code
    WHERE NOT EXISTS (SELECT FROM intermediate_stations i WHERE i.route_id = r.route_id)
    ORDER BY r.route_id, u.sequence_order;

    -- What trips draw from: each route's stops, vehicles and drivers, by a dense index.
    CREATE TEMP TABLE demo_route ON COMMIT DROP AS
    SELECT (row_number() OVER (ORDER BY r.route_id) - 1)::int AS route_index, r.route_id, r.route_type,
           ARRAY(SELECT i.station_id FROM intermediate_stations i WHERE i.route_id = r.route_id
                 ORDER BY i.sequence_order) AS stops,
           ARRAY(SELECT v.vehicle_id FROM vehicles v WHERE v.concessionaire_id = r.concessionaire_id AND v.is_active) AS vehicles,
           ARRAY(SELECT d.driver_id FROM drivers d WHERE d.concessionaire_id = r.concessionaire_id AND d.is_active) AS drivers
    FROM routes r JOIN demo_route_plan p USING (route_code)
    WHERE r.is_active AND (SELECT count(*) FROM intermediate_stations i WHERE i.route_id = r.route_id) >= 2;
    SELECT count(*) INTO v_route_count FROM demo_route;
    ANALYZE demo_route;

    -- ------------------------------------------------------------ recharge points
    -- Ticket offices at portals, cable stations and one trunk station in three; a neighbourhood
    -- shop at every barrio stop. Every locality with a station then has a point.
    INSERT INTO recharge_points (name, address, latitude, longitude, location_id, operator)
    SELECT x.name, s.address, s.latitude, s.longitude, s.location_id, x.operator
    FROM (SELECT *, row_number() OVER (ORDER BY station_code) AS station_order FROM demo_station) AS s
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.station_type = 'ZONAL' THEN format('Punto de recarga %s', s.name)
                    ELSE format('Taquilla %s', s.name) END AS name,
               CASE WHEN s.station_type = 'ZONAL' THEN 'Red de recarga externa' ELSE 'Recaudo Bogotá' END AS operator
    ) AS x
    WHERE (s.station_type <> 'TRUNK' OR s.station_order % 3 = 0)
      AND NOT EXISTS (SELECT FROM recharge_points rp WHERE rp.name = x.name)
    ORDER BY s.station_code;

    CREATE TEMP TABLE demo_point ON COMMIT DROP AS
    SELECT location_id, array_agg(recharge_point_id ORDER BY recharge_point_id) AS points
    FROM recharge_points WHERE location_id IS NOT NULL GROUP BY location_id;
    SELECT array_agg(recharge_point_id ORDER BY recharge_point_id) INTO v_recharge_points FROM recharge_points;

    -- ------------------------------------------------------------ cards: what each one will do
    -- User u holds card u; every fourth user also holds one of the last N x 2,000 cards.
    -- Trips per card follow an exponential law capped at 15x the mean (many occasional riders,
    -- some daily commuters; the cap keeps a card's journeys under its 360 slots), inactive
    -- cards ride little, and the integer shares add up to exactly v_trip_count.
    CREATE TEMP TABLE demo_card ON COMMIT DROP AS
    WITH drawn AS (
        SELECT card_id,
               CASE WHEN card_id <= v_user_count THEN card_id ELSE 4 * (card_id - v_user_count) END AS user_id,
               random() AS status_draw, random() AS weight_draw, random() AS transfer_draw,
               random() AS late_start_draw, random() AS start_draw, random() AS acquired_draw,
               random() AS step_draw, random() AS home_route_draw
        FROM generate_series(1, v_card_count) AS card_id
    ), weighted AS (
        SELECT d.*,
               CASE WHEN status_draw < 0.90 THEN 'active' WHEN status_draw < 0.93 THEN 'blocked'
                    WHEN status_draw < 0.97 THEN 'lost' ELSE 'inactive' END AS status,
               round(least(-ln(1 - weight_draw), 15) * CASE WHEN status_draw < 0.97 THEN 100 ELSE 15 END)::bigint AS weight
        FROM drawn d
    ), allotted AS (
        SELECT w.*,
               (sum(weight) OVER (ORDER BY card_id))::bigint AS weight_through,
               (sum(weight) OVER ())::bigint AS total_weight
        FROM weighted w
    ), counted AS (
        SELECT a.*,
               a.weight_through * v_trip_count / a.total_weight
                   - (a.weight_through - a.weight) * v_trip_count / a.total_weight AS trips
        FROM allotted a
    ), shaped AS (
        SELECT c.*, floor(c.trips * c.transfer_draw * 0.4)::int AS transfers  -- at most one per journey
        FROM counted c
    ), started AS (  -- most cards were bought before the history starts, the others during it
        SELECT s.*, s.trips - s.transfers AS journeys,
               CASE WHEN s.late_start_draw < 0.7 THEN 0
                    ELSE floor(s.start_draw * (v_slot_count - (s.trips - s.transfers) + 1))::int END AS first_slot
        FROM shaped s
    )
    SELECT card_id, user_id, status, trips::int, transfers, journeys::int, first_slot,
           (sum(trips) OVER (ORDER BY card_id) - trips + 1)::bigint AS first_trip_id,
           CASE WHEN first_slot = 0 THEN v_history_start - acquired_draw * interval '900 days'
                ELSE v_history_start + ((first_slot + v_slot_offset) / 2) * interval '1 day' - acquired_draw * interval '20 days'
           END AS acquired_at,
           -- What the rider tops up in: recharges bring the card's total up to a multiple of it.
           (CASE WHEN step_draw < 0.10 THEN 2000 WHEN step_draw < 0.35 THEN 5000 WHEN step_draw < 0.70 THEN 10000
                 WHEN step_draw < 0.90 THEN 20000 ELSE 50000 END)::bigint AS recharge_step,
           floor(home_route_draw * v_route_count)::int AS home_route
    FROM started
    ORDER BY card_id;
    ANALYZE demo_card;

    -- ------------------------------------------------------------ users
    INSERT INTO users (user_id, first_name, last_name, contact_number, email, gender, date_of_birth,
                       residential_address, id_number, city_of_birth, registration_date)
    SELECT u.user_id, u.first_name, u.last_name,
           format('+57 3%s %s', lpad(floor(u.mobile_draw * 25)::text, 2, '0'), lpad(floor(u.line_draw * 1e7)::text, 7, '0')),
           format('%s.%s%s@%s', lower(translate(u.first_name, 'ÁÉÍÓÚáéíóúñ', 'AEIOUaeioun')),
                  lower(translate(split_part(u.last_name, ' ', 1), 'ÁÉÍÓÚáéíóúñ', 'AEIOUaeioun')), u.user_id,
                  v_email_domains[1 + floor(u.domain_draw * cardinality(v_email_domains))::int]),
           u.gender,
           (current_date - interval '14 years' - u.age_draw ^ 1.5 * interval '64 years')::date,
           format('%s %s # %s-%s, %s', v_street_kinds[1 + floor(u.street_draw * cardinality(v_street_kinds))::int],
                  1 + floor(u.number_draw * 200)::int, 1 + floor(u.crossing_draw * 120)::int,
                  1 + floor(u.door_draw * 98)::int,
                  v_urban_localities[1 + floor(u.locality_draw * cardinality(v_urban_localities))::int]),
           -- Cédulas of 10 digits, unique because u -> 7919u mod 99999989 (a prime) is a permutation.
           format('10%s', lpad((u.user_id * 7919 % 99999989)::text, 8, '0')),
           CASE WHEN u.city_draw < 0.62 THEN 'Bogotá'
                ELSE v_birth_cities[1 + floor((u.city_draw - 0.62) / 0.38 * cardinality(v_birth_cities))::int] END,
           u.first_card_at - u.registered_draw * interval '30 days'
    FROM (
        SELECT n.*,
               CASE n.gender WHEN 'F' THEN v_female_names[1 + floor(n.name_draw * cardinality(v_female_names))::int]
                             WHEN 'M' THEN v_male_names[1 + floor(n.name_draw * cardinality(v_male_names))::int]
                             ELSE (v_female_names || v_male_names)[1 + floor(n.name_draw * (cardinality(v_female_names) + cardinality(v_male_names)))::int]
               END AS first_name,
               format('%s %s', v_surnames[1 + floor(n.surname_draw * cardinality(v_surnames))::int],
                      v_surnames[1 + floor(n.second_surname_draw * cardinality(v_surnames))::int]) AS last_name
        FROM (
            SELECT g.*, CASE WHEN g.gender_draw < 0.51 THEN 'F' WHEN g.gender_draw < 0.99 THEN 'M' ELSE 'O' END AS gender
            FROM (
                SELECT c.user_id, min(c.acquired_at) AS first_card_at,
                       random() AS gender_draw, random() AS name_draw, random() AS surname_draw,
                       random() AS second_surname_draw, random() AS mobile_draw, random() AS line_draw,
                       random() AS domain_draw, random() AS age_draw, random() AS street_draw,
                       random() AS number_draw, random() AS crossing_draw, random() AS door_draw,
                       random() AS locality_draw, random() AS city_draw, random() AS registered_draw
                FROM demo_card c GROUP BY c.user_id
            ) AS g
        ) AS n
    ) AS u
    ORDER BY u.user_id;

    -- ------------------------------------------------------------ trips
    -- Journey j of a card takes a slot in the j-th of `journeys` equal strata of the card's
    -- slots: increasing and distinct. Mornings start 05:00-09:00, evenings 15:30-20:30 (peaks at
    -- 07:00 and 18:00); a second leg boards 11-70 minutes after the first, so every first leg
    -- is more than 90 minutes after the previous boarding. Bus trips without a tap-out stay open.
    INSERT INTO trips (trip_id, card_id, vehicle_id, route_id, boarding_station_id, disembarking_station_id,
                       boarding_time, disembarking_time, fare_id, fare_charged, is_transfer, transfer_group_id, driver_id)
    SELECT t.trip_id, t.card_id, t.vehicles[1 + floor(t.vehicle_draw * cardinality(t.vehicles))::int], t.route_id,
           t.stops[1 + t.boarding_offset],
           CASE WHEN t.completed THEN t.stops[1 + (t.boarding_offset + 1
                                                   + floor(t.alighting_draw * (cardinality(t.stops) - 1))::int) % cardinality(t.stops)] END,
           t.boarding_time, CASE WHEN t.completed THEN t.boarding_time + t.ride END,
           t.fare_id, t.fare, t.is_transfer, t.transfer_group_id,
           t.drivers[1 + floor(t.driver_draw * cardinality(t.drivers))::int]
    FROM (
        SELECT l.*, r.route_id, r.stops, r.vehicles, r.drivers, f.fare_id, f.value AS fare,
               floor(l.boarding_draw * cardinality(r.stops))::int AS boarding_offset,
               l.completed_draw < CASE WHEN r.route_type IN ('TRUNK', 'CABLE') THEN 0.92 ELSE 0.35 END AS completed
        FROM (
            SELECT leg.*, j.card_id,
                   j.first_trip_id + j.legs_before + leg.leg - 1 AS trip_id,
                   leg.leg = 2 AS is_transfer,
                   CASE WHEN leg.leg = 2 THEN j.first_trip_id + j.legs_before END AS transfer_group_id,
                   CASE WHEN leg.leg = 1 THEN j.first_route
                        ELSE (j.first_route + 1 + floor(j.second_route_draw * (v_route_count - 1))::int) % v_route_count
                   END AS route_index,
                   j.starts_at + CASE WHEN leg.leg = 2 THEN j.first_ride + j.walk ELSE interval '0' END AS boarding_time,
                   CASE WHEN leg.leg = 1 THEN j.first_ride ELSE leg.second_ride END AS ride
            FROM (
                SELECT p.card_id, p.first_trip_id,
                       (jd.journey - 1) + (jd.journey - 1) * p.transfers / p.journeys AS legs_before,
                       1 + jd.journey * p.transfers / p.journeys - (jd.journey - 1) * p.transfers / p.journeys AS legs,
                       CASE WHEN jd.home_draw < 0.6 THEN p.home_route ELSE floor(jd.route_draw * v_route_count)::int END AS first_route,
                       jd.second_route_draw,
                       v_history_start + ((jd.slot + v_slot_offset) / 2) * interval '1 day'
                           + CASE WHEN (jd.slot + v_slot_offset) % 2 = 0
                                  THEN interval '5 hours' + (jd.hour_draw + jd.other_hour_draw) * interval '2 hours'
                                  ELSE interval '15 hours 30 minutes' + (jd.hour_draw + jd.other_hour_draw) * interval '150 minutes'
                             END AS starts_at,
                       interval '8 minutes' + jd.ride_draw * interval '47 minutes' AS first_ride,
                       interval '3 minutes' + jd.walk_draw * interval '12 minutes' AS walk
                FROM demo_card p
                CROSS JOIN LATERAL (
                    SELECT journey,
                           p.first_slot + (journey - 1) * (v_slot_count - p.first_slot) / p.journeys
                               + floor(random() * (journey * (v_slot_count - p.first_slot) / p.journeys
                                                   - (journey - 1) * (v_slot_count - p.first_slot) / p.journeys))::int AS slot,
                           random() AS home_draw, random() AS route_draw, random() AS second_route_draw,
                           random() AS hour_draw, random() AS other_hour_draw, random() AS ride_draw, random() AS walk_draw
                    FROM generate_series(1, p.journeys) AS journey
                ) AS jd
            ) AS j
            CROSS JOIN LATERAL (
                SELECT leg, random() AS boarding_draw, random() AS alighting_draw, random() AS completed_draw,
                       random() AS vehicle_draw, random() AS driver_draw,
                       interval '8 minutes' + random() * interval '47 minutes' AS second_ride
                FROM generate_series(1, j.legs) AS leg
            ) AS leg
        ) AS l
        JOIN demo_route r ON r.route_index = l.route_index
        JOIN demo_fare f ON f.is_transfer = l.is_transfer AND f.onto_cable = (r.route_type = 'CABLE')
    ) AS t;
    PERFORM setval(pg_get_serial_sequence('trips', 'trip_id'), v_trip_count);
    FOREACH v_statement IN ARRAY v_trip_indexes LOOP
        EXECUTE v_statement;
    END LOOP;
    ANALYZE trips;

    -- ------------------------------------------------------------ recharges
    -- Before every trip that takes the card's fares so far past a multiple of its step, at a
    -- point in the boarding station's locality, after the card's previous boarding. Active
    -- cards never ridden were often topped up once when bought.
    -- Ids follow (card, time) like the trips'; transaction ids are UUID-shaped like the API's,
    -- from md5 (four times cheaper than gen_random_uuid, which reads the system's entropy).
    INSERT INTO recharges (recharge_id, card_id, recharge_point_id, amount, recharge_timestamp, transaction_id)
    SELECT n.recharge_id, n.card_id, n.recharge_point_id, n.amount, n.recharged_at,
           md5(format('demo recharge %s', n.recharge_id))::uuid::text
    FROM (
        SELECT row_number() OVER (ORDER BY x.card_id, x.recharged_at) AS recharge_id, x.*
        FROM (
            SELECT due.card_id, due.points[1 + floor(due.point_draw * cardinality(due.points))::int] AS recharge_point_id,
                   due.amount,
                   due.boarding_time - CASE WHEN due.since_previous IS NULL
                                            THEN interval '5 minutes' + due.lead_draw * interval '85 minutes'
                                            ELSE interval '2 minutes' + due.lead_draw * least(due.since_previous - interval '3 minutes',
                                                                                               interval '2 days') END AS recharged_at
            FROM (
                SELECT h.card_id, h.boarding_time, h.since_previous, pt.points,
                       p.recharge_step * ((h.fares_through + p.recharge_step - 1) / p.recharge_step
                                          - (h.fares_through - h.fare_charged + p.recharge_step - 1) / p.recharge_step) AS amount,
                       random() AS point_draw, random() AS lead_draw
                FROM (
                    SELECT t.card_id, t.trip_id, t.boarding_time, t.boarding_station_id, t.fare_charged,
                           (sum(t.fare_charged) OVER card_history)::bigint AS fares_through,
                           t.boarding_time - lag(t.boarding_time) OVER card_history AS since_previous
                    FROM trips t
                    WINDOW card_history AS (PARTITION BY t.card_id ORDER BY t.trip_id)
                ) AS h
                JOIN demo_card p USING (card_id)
                JOIN stations s ON s.station_id = h.boarding_station_id
                JOIN demo_point pt ON pt.location_id = s.location_id
                WHERE (h.fares_through + p.recharge_step - 1) / p.recharge_step
                      > (h.fares_through - h.fare_charged + p.recharge_step - 1) / p.recharge_step
            ) AS due
            UNION ALL
            SELECT p.card_id, v_recharge_points[1 + floor(random() * cardinality(v_recharge_points))::int], p.recharge_step,
                   p.acquired_at + random() * (now() - p.acquired_at)
            FROM demo_card p
            WHERE p.trips = 0 AND p.status = 'active' AND random() < 0.5
        ) AS x
    ) AS n
    ORDER BY n.recharge_id;
    PERFORM setval(pg_get_serial_sequence('recharges', 'recharge_id'), (SELECT max(recharge_id) FROM recharges));

    -- ------------------------------------------------------------ cards, from their history
    -- A card that is no longer active changed status some time after its last use.
    INSERT INTO cards (card_id, card_number, user_id, acquisition_date, status, balance,
                       opening_balance, last_used_date, update_date)
    SELECT p.card_id, nextval('card_number_seq')::text, p.user_id, p.acquired_at, p.status,
           coalesce(r.recharged, 0) - coalesce(t.fares, 0), 0, t.last_boarding,
           CASE WHEN p.status = 'active' THEN greatest(p.acquired_at, t.last_boarding, r.last_recharge)
                ELSE greatest(p.acquired_at, t.last_boarding, r.last_recharge)
                     + random() * (now() - greatest(p.acquired_at, t.last_boarding, r.last_recharge))
           END
    FROM demo_card p
    LEFT JOIN (SELECT card_id, sum(fare_charged)::bigint AS fares, max(boarding_time) AS last_boarding
               FROM trips GROUP BY card_id) AS t USING (card_id)
    LEFT JOIN (SELECT card_id, sum(amount)::bigint AS recharged, max(recharge_timestamp) AS last_recharge
               FROM recharges GROUP BY card_id) AS r USING (card_id)
    ORDER BY p.card_id;
    PERFORM setval(pg_get_serial_sequence('users', 'user_id'), v_user_count);
    PERFORM setval(pg_get_serial_sequence('cards', 'card_id'), v_card_count);

    FOREACH v_statement IN ARRAY v_other_indexes LOOP
        EXECUTE v_statement;
    END LOOP;
    PERFORM refresh_counters();
    PERFORM set_config('session_replication_role', v_replication_role, true);
    ANALYZE locations, concessionaires, depots, vehicles, drivers, stations, routes, intermediate_stations,
            recharge_points, users, cards, recharges, trips, trip_counters, user_counters, user_active_cards;
END $$;
