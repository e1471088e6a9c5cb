-- VM3: the roles and the database, made once; safe to run again (nothing that exists is
-- touched but the runtime role's password and settings). install.sh runs it as the
-- superuser, with the variables set over stdin so that the password is in no argv:
--
--   \set owner_role travel_owner
--   \set api_role travel_api
--   \set database travel
--   \set api_password ...
--
-- owner_role owns every table and function (migrate.sh applies the schema as it). It
-- cannot log in: only the superuser becomes it, with SET ROLE. api_role is what the API
-- logs in as: grants.sql gives it exactly what the API runs.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I NOLOGIN', :'owner_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner_role') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'api_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'api_role') \gexec
ALTER ROLE :"api_role" PASSWORD :'api_password';
-- 100 max_connections: two API hosts' pools (2 x 34) fit, and the last 20 stay for the
-- backup, a replica and the operator even if an API misbehaves.
ALTER ROLE :"api_role" CONNECTION LIMIT 80;
-- A server-side bound above the pool's own 2 s command timeout, for a client that has none.
ALTER ROLE :"api_role" SET statement_timeout = '10s';

SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              :'database', :'owner_role', 'UTF8')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
