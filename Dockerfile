# syntax=docker/dockerfile:1
#
# The bbmq broker as a container: `docker compose up -d` runs it with MySQL
# (see docker-compose.yml and the README), `docker build -t bbmq .` builds it alone.
# Every setting is a BBMQ_* environment variable (see bbmq/config.py).

# The base: the official Python image. Anything with Python >= 3.11 and pip on Debian
# will do (the container tests build on a debootstrapped one: --build-arg BASE_IMAGE=...).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}
ARG BASE_IMAGE

LABEL org.opencontainers.image.title="bbmq" \
      org.opencontainers.image.description="A small, durable message broker you can read end to end" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Runtime dependencies in their own layer, rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The package itself (its dependencies are all in the layer above), then the
# unprivileged user the broker runs as and the data directory it owns.
COPY pyproject.toml README.md /tmp/src/
COPY bbmq /tmp/src/bbmq
RUN pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && groupadd --system --gid 10001 bbmq \
    && useradd --system --uid 10001 --gid bbmq --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin bbmq \
    && mkdir -p /data \
    && chown bbmq:bbmq /data

# The command-line producer and consumer, for `docker compose run --rm producer TOPIC`.
COPY producer.py consumer.py ./

# Listen on every interface of the container (the default, 127.0.0.1, would be
# unreachable from outside it); keep the SQLite store, pidfile and log in the volume.
ENV BBMQ_HOST=0.0.0.0 \
    BBMQ_PORT=15333 \
    BBMQ_DATA_DIR=/data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 15333 15334

# Healthy when the broker answers PING. `bbmq ping` reads BBMQ_HOST/BBMQ_PORT, so it
# follows the listen address (0.0.0.0 reaches the container's own interfaces).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bbmq", "ping", "--timeout", "3"]

# The broker runs in the foreground as the container's main process (exec form: no
# shell in between), so `docker stop`'s SIGTERM reaches it directly; it drains its
# connections and the store, then exits 0. It starts no child processes, so no init
# is needed to reap them.
STOPSIGNAL SIGTERM
CMD ["bbmq", "server", "run"]
