# syntax=docker/dockerfile:1
# One build, two images (the operator and the worker share every dependency and the data contract):
#   docker build --target operator -t ghcr.io/posegen/posegen-operator:0.1.0 .
#   docker build --target worker   -t ghcr.io/posegen/posegen-worker:0.1.0 .
# The chart's migration Job runs `python -m posegen_common.database` from the operator image.
# The base is pinned to a patch release; pin its digest too (python:3.11.11-slim-bookworm@sha256:…)
# in your registry mirror for byte-for-byte reproducible builds.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: the project and its dependencies in a virtualenv ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/posegen
WORKDIR /src
COPY pyproject.toml ./
# The dependencies first, in a layer of their own: a change to the code alone reuses it.
RUN /opt/posegen/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt \
 && /opt/posegen/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY common ./common
COPY operator ./operator
COPY worker ./worker
COPY devstack ./devstack
# Every dependency ships binary wheels (psycopg2-binary, Pillow, ...): nothing is compiled.
RUN /opt/posegen/bin/pip install --no-cache-dir . \
 && /opt/posegen/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/posegen/bin/python -m compileall -q /opt/posegen/lib

# ---- runtime: the virtualenv only; no compilers, no pip in it, no source tree --------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.source="https://github.com/posegen/posegen-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 posegen \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin posegen
COPY --from=build /opt/posegen /opt/posegen
ENV PATH=/opt/posegen/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric user: Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

FROM runtime AS worker
LABEL org.opencontainers.image.title="posegen-worker" \
      org.opencontainers.image.description="PoseGen worker: renders poses, checkpoints each one, heartbeats"
USER 0
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/posegen/outputs
USER 10001:10001
ENV POSEGEN_OUTPUT_DIR=/var/lib/posegen/outputs
# The operator mounts the output volume here (POSEGEN_OUTPUT_MOUNT_PATH).
VOLUME ["/var/lib/posegen/outputs"]
CMD ["python", "-m", "posegen_worker"]

# Last, so a plain `docker build .` gives the operator.
FROM runtime AS operator
LABEL org.opencontainers.image.title="posegen-operator" \
      org.opencontainers.image.description="PoseGen Operator: PoseGeneration controller with checkpoint recovery"
# admin API (and /readyz), kopf liveness (/healthz), Prometheus metrics
EXPOSE 8080 8081 9090
CMD ["python", "-m", "posegen_operator"]
