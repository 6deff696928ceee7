# syntax=docker/dockerfile:1
#
# The signing-keys service image: HTTP on 8080, gRPC on 50051, non-root, no build tools.
#
#   docker build -t signing-keys:local .
#   docker run --rm -p 8080:8080 -p 50051:50051 \
#     -e SIGNING_KEYS_REGIONS=aws-us-east-1:aws \
#     -e SIGNING_KEYS_LOCAL_REGION=aws-us-east-1 \
#     -e SIGNING_KEYS_DSN_AWS_US_EAST_1=postgresql://… signing-keys:local
#
# Configuration is the SIGNING_KEYS_* environment (service/settings.py). The default command
# is `serve`; `migrate`, `status` and `token create` run the same way
# (`docker run … signing-keys:local migrate`).
# Checked by tests/deploy/test_dockerfile.py (parsed with BuildKit's own parser, hadolint);
# no image is built by the test suite.

# A fixed Python release, pinned by digest for reproducible builds: the multi-arch index
# Docker Hub published for python:3.11.15-slim-bookworm (built 2026-08-05; amd64 and arm64
# among its platforms). A digest never moves; to take a newer base, change both together:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.N-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# --- build: install the package and its dependencies into a virtualenv -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies ship as manylinux wheels for CPython 3.11 (aiohttp, asyncpg, cryptography,
# grpclib, protobuf): no compiler is needed here either.
RUN python -m venv /opt/signing-keys
# The dependencies first, in a layer of their own that a source change does not rebuild,
# each wheel checked against the lock's hashes.
COPY deploy/requirements.lock ./
RUN /opt/signing-keys/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
    -r requirements.lock
# Only the service package: harness/ (local topology, fault proxies) and tests/ are
# development tools and stay out of the image (tests/test_packaging.py checks). No
# dependency is resolved here (--no-deps), and the build backend is the locked setuptools.
COPY pyproject.toml README.md ./
COPY service ./service
# Compile bytecode now: the root filesystem is read-only at run time.
RUN /opt/signing-keys/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/signing-keys/bin/pip uninstall --yes pip setuptools \
    && /opt/signing-keys/bin/python -m compileall -q /opt/signing-keys/lib

# --- runtime: the virtualenv, the SQL and nothing else -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="signing-keys" \
      org.opencontainers.image.description="Multi-region registry of public signing keys and token verifier"
# The base image's own pip/setuptools are build tools: the service does not need them.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && groupadd --system --gid 10001 signing-keys \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin signing-keys
COPY --from=build /opt/signing-keys /opt/signing-keys
# `signing-keys migrate` reads the migrations from SIGNING_KEYS_SQL_DIR.
COPY sql /app/sql
COPY deploy/healthcheck.py /app/healthcheck.py
# SIGNING_KEYS_WORKERS=auto: one serving process per core the container may use (its CPU
# limit, rounded up), all sharing the two ports; set a number to choose.
ENV PATH=/opt/signing-keys/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIGNING_KEYS_SQL_DIR=/app/sql \
    SIGNING_KEYS_WORKERS=auto
WORKDIR /app
USER 10001:10001
# HTTP (SIGNING_KEYS_HTTP_PORT) and gRPC (SIGNING_KEYS_GRPC_PORT) defaults.
EXPOSE 8080 50051
# Liveness only (/healthz never depends on a database region), standard library only.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["signing-keys"]
CMD ["serve"]
