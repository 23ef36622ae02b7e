#!/bin/sh
# kvc-worker-loop: the worker container's entrypoint.
#
# kvc-worker is a command-line program: `kvc-worker generate` runs one
# sequence (prefix lookup, prefill, decode, write-through to the cache
# service) and exits; it has no request-serving mode yet. This loop keeps a
# worker pod busy with the configured sequence, run after run, which is what
# a Deployment needs (a container that exits is restarted with back-off).
#
#   kvc-worker-loop [EXTRA-FLAG...]      extra flags are added to every run
#
# Environment:
#   FLAGS_<name>=VALUE        kvc-worker's --<name>=VALUE, read by kvc-worker
#                             itself (absl --tryfromenv) for every FLAGS_*
#                             variable present, so a Secret can supply
#                             FLAGS_cache_token without it ever appearing on a
#                             command line. An unknown name fails the run.
#   KVC_WORKER_COMMAND        the kvc-worker command (default generate)
#   KVC_WORKER_PAUSE_SECONDS  pause between runs (default 5)
#   KVC_WORKER_RUNS           stop after this many runs and exit with the
#                             last run's status (default 0 = never stop)
#   KVC_WORKER_STATE_DIR      heartbeat files (default /tmp/kvc-worker):
#                               finished  touched after every run
#                               ok        present while the last run exited 0
#   KVC_WORKER_BIN            the kvc-worker binary (default: from PATH)
#
# SIGTERM / SIGINT: a pause ends at once; a run in progress is left to
# finish, because kvc-worker has no signal handling of its own and would die
# with its write-through queue unsent (a run ends by flushing it: up to 30 s,
# 2 s when the service is away). Then exit 0. The pod's
# terminationGracePeriodSeconds must cover one run.
set -u

# First, so a SIGTERM that arrives early still ends the loop cleanly.
child=
phase=start
stop() {
  if [ -n "$child" ]; then
    if [ "$phase" = run ]; then
      echo "kvc-worker-loop: stopping after the run in progress" >&2
    else
      kill -TERM "$child" 2>/dev/null
    fi
    wait "$child"
  fi
  exit 0
}
trap stop TERM INT

bin=${KVC_WORKER_BIN:-kvc-worker}
cmd=${KVC_WORKER_COMMAND:-generate}
pause=${KVC_WORKER_PAUSE_SECONDS:-5}
runs=${KVC_WORKER_RUNS:-0}
state=${KVC_WORKER_STATE_DIR:-/tmp/kvc-worker}

mkdir -p "$state" || exit 1
rm -f "$state/finished" "$state/ok"

# The names of the FLAGS_* variables, comma-separated.
flags=$(env | sed -n 's/^FLAGS_\([A-Za-z0-9_]*\)=.*/\1/p' | sort -u | paste -sd, -)
echo "kvc-worker-loop: '$bin $cmd' every ${pause}s, flags from the environment: ${flags:-none}" >&2

n=0
while :; do
  n=$((n + 1))
  # In the background and waited for, so a signal interrupts the wait and
  # the trap runs at once.
  phase=run
  "$bin" "$cmd" ${flags:+"--tryfromenv=$flags"} "$@" &
  child=$!
  wait "$child"
  rc=$?
  child=
  phase=pause
  touch "$state/finished"
  if [ "$rc" -eq 0 ]; then
    touch "$state/ok"
  else
    rm -f "$state/ok"
    echo "kvc-worker-loop: run $n exited with status $rc" >&2
  fi
  if [ "$runs" -gt 0 ] && [ "$n" -ge "$runs" ]; then
    exit "$rc"
  fi
  sleep "$pause" &
  child=$!
  wait "$child"
  child=
done
