#!/bin/sh
# kvc-worker-serve: the worker container's entrypoint.
#
# Replaces itself (exec) with `kvc-worker serve`, the kvcache.v1.Worker gRPC
# service (proto/kvcache/v1/worker.proto) plus grpc.health.v1, so kvc-worker
# is the container's main process and SIGTERM reaches it directly: it stops
# taking requests (health NOT_SERVING, new calls UNAVAILABLE), lets admitted
# ones finish within --shutdown_grace, flushes its write-through to the cache
# service (up to 30 s, 2 s when the service is away) and exits 0.
#
#   kvc-worker-serve [EXTRA-FLAG...]     extra flags follow the environment's
#                                        (on the command line, so they win)
#
# Environment:
#   FLAGS_<name>=VALUE   kvc-worker's --<name>=VALUE, read by kvc-worker itself
#                        (absl --tryfromenv) for every FLAGS_* variable
#                        present, so a Secret can supply FLAGS_cache_token
#                        without it ever appearing on a command line. An
#                        unknown name makes kvc-worker refuse to start.
#   KVC_WORKER_BIN       the kvc-worker binary (default: from PATH)
set -u

bin=${KVC_WORKER_BIN:-kvc-worker}

# The names of the FLAGS_* variables, comma-separated.
flags=$(env | sed -n 's/^FLAGS_\([A-Za-z0-9_]*\)=.*/\1/p' | sort -u | paste -sd, -)
echo "kvc-worker-serve: '$bin serve', flags from the environment: ${flags:-none}" >&2

exec "$bin" serve ${flags:+"--tryfromenv=$flags"} "$@"
