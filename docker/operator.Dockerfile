# syntax=docker/dockerfile:1.7
# The orch-operator image: a static-ish Rust binary on distroless (glibc, CA certificates,
# no shell, no package manager), running as the distroless "nonroot" user 65532.
#
#   docker build -f docker/operator.Dockerfile -t orch-operator:0.1.0 .
#
# Not built in this repository's CI: the development machines have no Docker. The file is
# reviewed by hand; the Helm chart (charts/orch-operator) expects exactly what it provides:
# user 65532, a read-only root filesystem (only /tmp is written, an emptyDir), the binary
# as the entrypoint, /healthz /readyz /metrics on 8080.

# Base images are build arguments so that a release pins them by digest (the tags below are
# for development; a tag can move under you, a digest cannot):
#
#   docker build --build-arg BUILDER_IMAGE=rust@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12@sha256:<digest> ...
#
# `docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot` prints the digest to pin.

ARG RUST_VERSION=1
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# checkov:skip=CKV_DOCKER_7: the builder image is a build argument (a tag for development, a digest for releases)
FROM ${BUILDER_IMAGE} AS builder
# cmake + clang: aws-lc-sys (rustls crypto of the AWS SDK) builds C code; rusqlite bundles
# SQLite (cc). Both are harmless when not needed.
# Versions come with the pinned base image's Debian release; exact apt pins would break
# the build at the next point release (Debian drops superseded versions).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir across builds (BuildKit); the binary is
# copied out of the cached target dir, which is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orch-operator \
 && install -D -m 0755 target/release/orch-operator /out/orch-operator

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="orch-operator" \
      org.opencontainers.image.description="Kubernetes operator for orch batch jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/orch-operator /usr/local/bin/orch-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orch-operator"]
