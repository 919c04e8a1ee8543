# syntax=docker/dockerfile:1
# nxjobs: one image for every queue's worker, the callbacks receiver, the metrics
# exporter, Celery beat, Flower and the sandbox (docker-compose.yml picks the command).
# Two stages: wheels are built in the first, the runtime gets only the installed
# packages (no pip cache, no build files), runs as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nxjobs/ nxjobs/
# Every dependency ships manylinux wheels (uvloop, httptools, hiredis): no compiler needed.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM python:3.11-slim
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
# 8090 sandbox, 8091 callbacks receiver, 9808 metrics exporter, 5555 Flower. /data: Flower and beat state.
EXPOSE 8090 8091 9808 5555
VOLUME ["/data"]
CMD ["nxjobs", "worker"]
