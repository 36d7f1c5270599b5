-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d/),
-- as the superuser of POSTGRES_USER. Same layout as `make up` (infra/postgres.py): a login role
-- `app` (password `app`) that is not a superuser, and one database per service, owned by it.
-- Each service creates its own tables in its database at start-up (shared/db.py migrate).
CREATE ROLE app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'app';

CREATE DATABASE "order" OWNER app;
CREATE DATABASE "payment" OWNER app;
CREATE DATABASE "shipping" OWNER app;
CREATE DATABASE "query" OWNER app;
