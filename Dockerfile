# syntax=docker/dockerfile:1
# nxjobs: one image for every queue's worker, the callbacks receiver, the metrics
# exporter, Celery beat and Flower (docker-compose.yml picks the command).
# Wheels are built in the first stage, the runtime gets only the installed
# packages (no pip cache, no build files), runs as an unprivileged user.
# The `sandbox` target adds the fake NXCloud (compose profile sandbox); the default
# target, the last stage, is the service image without it.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nxjobs/ nxjobs/
# Every dependency ships manylinux wheels (uvloop, httptools, hiredis): no compiler needed.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    NXJOBS_LOG_FORMAT=json \
    PYTHONPATH=/app
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Service packages run from the workdir (`celery -A workers.celery_app`); only nxjobs/ is installed.
COPY config/ config/
COPY tasks/ tasks/
COPY workers/ workers/
USER 10001:10001
# 8091 callbacks receiver, 9808 metrics exporter, 5555 Flower. /data: Flower and beat state.
EXPOSE 8091 9808 5555
VOLUME ["/data"]
CMD ["nxjobs", "worker"]

# The fake NXCloud runs from the workdir (`python -m sandbox`), like workers/: it is no part of the
# wheel, and only this target carries it and its fake credentials.
FROM runtime AS sandbox
COPY sandbox/ sandbox/
EXPOSE 8090
CMD ["python", "-m", "sandbox", "--host", "0.0.0.0", "--port", "8090"]

# Default target: the service image.
FROM runtime
