-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d/),
-- as the superuser of POSTGRES_USER. Same layout as `make up` (infra/postgres.py, least
-- privilege): each service logs in with its own role, which owns its own database and nothing
-- else (CONNECT revoked from PUBLIC); the key store of customers' data keys is owned by the
-- order service's role, shipping and query may connect to it and read its tables, payment may
-- not connect to it. `app` (password `app`) is the operator's role, a member of every service
-- role. Each service creates its own tables at start-up (shared/db.py migrate; the order
-- service the key store's, shared/keystore.py).
CREATE ROLE app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'app';
CREATE ROLE order_service WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'order_service';
CREATE ROLE payment_service WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'payment_service';
CREATE ROLE shipping_service WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'shipping_service';
CREATE ROLE query_service WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'query_service';

CREATE DATABASE "order" OWNER order_service;
CREATE DATABASE "payment" OWNER payment_service;
CREATE DATABASE "shipping" OWNER shipping_service;
CREATE DATABASE "query" OWNER query_service;
CREATE DATABASE "keystore" OWNER order_service;

REVOKE ALL ON DATABASE "order" FROM PUBLIC;
REVOKE ALL ON DATABASE "payment" FROM PUBLIC;
REVOKE ALL ON DATABASE "shipping" FROM PUBLIC;
REVOKE ALL ON DATABASE "query" FROM PUBLIC;
REVOKE ALL ON DATABASE "keystore" FROM PUBLIC;
GRANT CONNECT ON DATABASE "keystore" TO shipping_service, query_service;
GRANT order_service, payment_service, shipping_service, query_service TO app;

\connect keystore
ALTER DEFAULT PRIVILEGES FOR ROLE order_service IN SCHEMA public GRANT SELECT ON TABLES TO shipping_service, query_service;
