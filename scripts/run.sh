#!/usr/bin/env bash
# The main job on embedded defaults: installs what is missing, builds, starts
# the cache service on loopback (64 MiB host-memory tier, RocksDB under
# ./data/kvcache), and drives it with the client so you see blocks stored,
# evicted to RocksDB and read back. Then it shuts the service down with
# SIGTERM (drain, flush, exit). Run it again: the RocksDB tier is still there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh kvcached kvcache-cli
BUILD_DIR="${KVC_BUILD_DIR:-build}"
DATA_DIR="${KVC_DATA_DIR:-./data/kvcache}"
mkdir -p "$DATA_DIR"
rm -f "$DATA_DIR/port"

"$BUILD_DIR/cachesvc/server/kvcached" \
  --listen_address=127.0.0.1:0 --port_file="$DATA_DIR/port" \
  --metrics_address=127.0.0.1:0 \
  --data_dir="$DATA_DIR" --host_capacity_bytes=64MiB --disk_capacity_bytes=1GiB \
  2> "$DATA_DIR/kvcached.log" &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 200); do
  [ -s "$DATA_DIR/port" ] && break
  kill -0 $SERVER_PID 2>/dev/null || { cat "$DATA_DIR/kvcached.log"; exit 1; }
  sleep 0.05
done
PORT=$(cat "$DATA_DIR/port")
echo "kvcached is serving on 127.0.0.1:$PORT (log: $DATA_DIR/kvcached.log)"
echo

"$BUILD_DIR/worker/kvcache-cli" --target="127.0.0.1:$PORT" demo

echo
echo "shutting down (SIGTERM: stop accepting, drain, flush host memory to RocksDB)"
kill -TERM $SERVER_PID
wait $SERVER_PID
trap - EXIT
grep -E '"event":"(server_started|host_tier_flushed|server_stopped)"' "$DATA_DIR/kvcached.log" || true
