# syntax=docker/dockerfile:1.7
# The orch-worker image, for the Kubernetes executor (one pod per Indexed Job task) and for
# anyone who wants `orch` in a container. Debian slim with python3, because handlers are
# often Python (`handler.exec.command: [python3, handler.py]`); orch_handler.py is on
# PYTHONPATH. Build your handler image FROM this one and add your code and its packages.
#
#   docker build -f docker/worker.Dockerfile -t orch-worker:0.1.0 .
#
# Not built in this repository's CI: the development machines have no Docker. Reviewed by
# hand. Runs as the non-root user orch (65532) and works with a read-only root filesystem:
# scratch space is /tmp (TMPDIR; mount an emptyDir or node-local disk there), HOME is /tmp.

# Base images are build arguments so that a release pins them by digest (the tags below are
# for development; a tag can move under you, a digest cannot):
#
#   docker build --build-arg BUILDER_IMAGE=rust@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=debian@sha256:<digest> ...
#
# `docker buildx imagetools inspect debian:bookworm-slim` prints the digest to pin.

ARG RUST_VERSION=1
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# checkov:skip=CKV_DOCKER_7: the builder image is a build argument (a tag for development, a digest for releases)
FROM ${BUILDER_IMAGE} AS builder
# Versions come with the pinned base image's Debian release; exact apt pins would break
# the build at the next point release (Debian drops superseded versions).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orch-worker -p orch-cli \
 && install -D -m 0755 target/release/orch-worker /out/orch-worker \
 && install -D -m 0755 target/release/orch /out/orch

FROM ${RUNTIME_IMAGE}
# tini as PID 1: forwards SIGTERM to orch-worker (checkpoint before the pod goes) and reaps
# handler processes.
# Versions come with the pinned base image's Debian release; exact apt pins would break
# the build at the next point release (Debian drops superseded versions).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 orch \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin orch \
 && install -d -o 65532 -g 65532 -m 0755 /work
COPY --from=builder /out/orch-worker /out/orch /usr/local/bin/
COPY python/orch_handler.py /opt/orch/python/orch_handler.py
LABEL org.opencontainers.image.title="orch-worker" \
      org.opencontainers.image.description="orch worker (and CLI) with python3 for exec handlers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONPATH=/opt/orch/python \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    HOME=/tmp
WORKDIR /work
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/orch-worker"]
