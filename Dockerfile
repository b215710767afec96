# syntax=docker/dockerfile:1.7
# One image for every flowwatch service; the command picks the service:
#   docker run IMAGE python -m services.detector worker
# Build:  docker build -t flowwatch:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- web: the console's front end (npm ci, type check, build); only its dist/ goes on --------
# (all of services/ is copied: .dockerignore allows top-level folders only; node_modules and dist stay out)
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY services/ /src/services/
RUN cd /src/services/console/web && npm ci --no-audit --no-fund && npm run build

# ---- build: resolve the runtime dependencies into a venv -----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# Runtime dependencies only (pyproject's [project.dependencies]), at the exact versions of the
# lock file: the test tools in the lock stay out of the image. Copying just these two files first
# keeps this slow layer (TensorFlow) cached while the code changes.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > requirements.runtime.txt \
 && pip install --constraint requirements.lock --requirement requirements.runtime.txt
COPY shared/ /app/shared/
COPY services/ /app/services/
COPY --from=web /src/services/console/web/dist /app/services/console/web/dist
# Bytecode compiled at build time: the root filesystem is read-only at run time.
RUN python -m compileall -q /app

# ---- run ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="flowwatch" \
      org.opencontainers.image.description="Real-time anomaly detection for utility networks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/flowwatch/flowwatch"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
RUN groupadd --system --gid 10001 flowwatch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/flowwatch --create-home --shell /usr/sbin/nologin flowwatch \
 && mkdir -p /data /models \
 && chown 10001:10001 /data /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
# Libraries that like to write caches (matplotlib, keras, anything under $HOME) write under /tmp,
# the one writable place besides the /data and /models volumes when the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FLOWWATCH_DATA_DIR=/data \
    FLOWWATCH_MODEL_DIR=/models
WORKDIR /app
USER 10001:10001
VOLUME ["/data", "/models"]
EXPOSE 8081 8082 8083 8084
# Faust handles SIGTERM itself (clean consumer-group leave, table flush); exec form so it gets it.
CMD ["python", "-m", "services.ingest", "worker"]
