# One image per service, built from this file by docker-compose.yml (`target:` = the service):
#   docker build -f docker/service.Dockerfile --target order -t events-first/order .
# Stages: `base` (Python + the project with its pinned dependencies, non-root user), then one
# small stage per service (order, payment, shipping, query, ui: the web UI), `topics` (the
# topic-creation job) and `auth-keys` (the job that creates the development signing key,
# infra/tokens.py).

FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# Dependencies first, in their own layer: the exact pins of pyproject.toml [project].dependencies,
# so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself. The code runs from /app (PYTHONPATH) so the SQL files next to the modules
# (shared/schema.sql, services/order/schema.sql, services/query/views.sql) are always there,
# whether or not the wheel declares them as package data.
COPY shared ./shared
COPY services ./services
COPY infra ./infra
COPY docker/healthcheck.py docker/create_topics.py ./docker/
RUN pip install . \
    && rm -rf build *.egg-info \
    && python -m compileall -q shared services infra docker \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /auth && chown app:app /auth

USER app

# `python docker/healthcheck.py <service> <default port>` GETs http://127.0.0.1:<HTTP_PORT>/health
# with the standard library only (no curl in the image); 200 only when the DB and Kafka are reachable.

FROM base AS order
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "order", "8001"]
CMD ["python", "-m", "services.order"]

FROM base AS payment
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "payment", "8002"]
CMD ["python", "-m", "services.payment"]

FROM base AS shipping
EXPOSE 8003
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "shipping", "8003"]
CMD ["python", "-m", "services.shipping"]

FROM base AS query
EXPOSE 8004
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "query", "8004"]
CMD ["python", "-m", "services.query"]

# The web UI: static files, development sign-in and one origin proxying to the four services.
FROM base AS ui
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "ui", "8000"]
CMD ["python", "-m", "services.ui"]

# A one-shot job: creates every topic of the message contract (shared/topics.py) and exits 0.
FROM base AS topics
CMD ["python", "docker/create_topics.py"]

# A one-shot job: creates the development signing key pair in /auth (the `auth-keys` volume the
# services mount read-only, AUTH_JWKS_FILE=/auth/jwks.json) once, and exits 0.
FROM base AS auth-keys
ENV RUN_DIR=/
CMD ["python", "-m", "infra", "token", "--init"]
