# nxjobs worker image: one image for every queue's worker, Flower and the
# sandbox (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /app /data \
    && chown app:app /data

WORKDIR /app

# Dependencies + the nxjobs package (the only one the wheel ships).
COPY pyproject.toml README.md ./
COPY nxjobs/ nxjobs/
RUN pip install --no-cache-dir . && rm -rf build *.egg-info

# Service packages run from the workdir (`celery -A workers.celery_app`).
COPY config/ config/
COPY tasks/ tasks/
COPY workers/ workers/

USER app
# 8090: `nxjobs sandbox`; 5555: Flower. /data holds Flower's state.
EXPOSE 8090 8091 5555
CMD ["nxjobs", "worker"]
