#!/usr/bin/env bash
# The cache-service cluster on several "hosts" of one machine: every kvcached
# member and every client in a network namespace of its own, joined by a
# bridge that lives in a namespace too, so nothing is added to the host's
# network (every address is a 10.77.0.x inside the namespaces, or loopback).
# Each process runs as
#     ip netns exec NS unshare --ipc --pid --fork --mount-proc --kill-child CMD
# so no two share IPC or a pid namespace: UCX cannot use shared memory or
# cross-memory attach between them and really moves the blocks over TCP
# (checked in the client's printed UCX lanes, KVC_UCX_PRINT_EP=1).
#
# Covers, with tests/cluster_probe_main.cc as the client:
#   1. placement and lookup across members (each member's own Stats);
#   2. a member SIGKILLed: its blocks are misses within the member timeout,
#      writes go to the others, no call fails;
#   3. restarted: its durable blocks are found on it again, and what went
#      elsewhere meanwhile is found there; a host whose link goes down (no
#      answer at all) costs the member timeout once, then misses;
#   4. a member added through DNS (the client namespace's /etc/hosts, via
#      /etc/netns/NS/hosts, lists the members under one name like a headless
#      Service): a running client picks it up, only its share of keys moves;
#   5. kvc-worker generate against the cluster by DNS name: write-through,
#      the prompt's prefix loaded back, and a member killed costing nothing
#      but misses (when the worker and the model are given).
#
# Usage: netns_cluster_test.sh KVCACHED CLUSTER_PROBE [KVC_WORKER MODEL_DIR]
# Exit 0 passed, 1 failed, 77 skipped (not root, or no network namespaces).
# Stops by itself (a watchdog ends it after 270 s) and removes every
# namespace, link and file it made, on success, failure or interruption;
# namespaces left by a run that was SIGKILLed are removed by the next run.
set -euo pipefail

KVCACHED=${1:?usage: $0 KVCACHED CLUSTER_PROBE [KVC_WORKER MODEL_DIR]}
PROBE=${2:?usage: $0 KVCACHED CLUSTER_PROBE [KVC_WORKER MODEL_DIR]}
WORKER=${3:-}
MODEL_DIR=${4:-}

. "$(dirname "${BASH_SOURCE[0]}")/netns_lib.sh"
netns_init kvc 270
declare -A MEMBER_PID

# --- the network: a bridge in namespace ${P}sw, one veth per host --------------
netns_bridge
for i in 1 2 3 4; do host "m$i" "10.77.0.1$i"; done
host c 10.77.0.100
ok "network: bridge + 5 namespaces (${P}m1..m4, ${P}c), 10.77.0.0/24"

# --- members ---------------------------------------------------------------------
TOKEN="token-of-tenant-a-netns-0123456789"
echo "a $TOKEN" >"$WORK/tokens"
start_member() {
  local i=$1
  local dir="$WORK/m$i" addr="10.77.0.1$i"
  mkdir -p "$dir"
  rm -f "$dir/port" "$dir/ucx_port"
  isolated "${P}m$i" "$KVCACHED" --listen_address="$addr:50051" --ucx_listen_address="$addr:50052" \
    --port_file="$dir/port" --ucx_port_file="$dir/ucx_port" --data_dir="$dir/data" --metrics_address= \
    --auth_tokens_file="$WORK/tokens" --host_capacity_bytes=64MiB --host_shards=4 --log_level=warning \
    >>"$dir/log" 2>&1 &
  MEMBER_PID[$i]=$!
  PIDS+=($!)
  disown "$!"  # no job-status noise when it is killed
  for _ in $(seq 1 300); do
    [[ -s $dir/port && -s $dir/ucx_port ]] && return 0
    kill -0 "${MEMBER_PID[$i]}" 2>/dev/null || die "kvcached m$i exited: $(tail -n 5 "$dir/log")"
    sleep 0.05
  done
  die "kvcached m$i did not come up in 15 s"
}
kill_member() {
  kill -KILL "${MEMBER_PID[$1]}"
  # --kill-child takes kvcached down with unshare; wait until both are gone
  # (its RocksDB lock with it).
  for _ in $(seq 1 100); do
    if ! kill -0 "${MEMBER_PID[$1]}" 2>/dev/null && [[ -z $(ip netns pids "${P}m$1") ]]; then return 0; fi
    sleep 0.05
  done
  die "kvcached m$1 outlived its SIGKILL: $(ip netns pids "${P}m$1" | xargs -r ps -o pid,ppid,stat,cmd -p)"
}
for i in 1 2 3; do start_member "$i"; done
timeout 5 ip netns exec "${P}c" bash -c 'exec 3<>/dev/tcp/10.77.0.11/50051' ||
  die "the bridge does not carry traffic from ${P}c to m1"
ok "kvcached m1..m3 serving (gRPC :50051, UCX :50052), each in its own net, IPC and pid namespaces"

# probe CMD FLAGS...: the cluster client in the client namespace, over UCX only.
probe() {
  local out
  if ! out=$(timeout 60 env KVC_UCX_PRINT_EP=1 ip netns exec "${P}c" unshare --ipc --pid --fork --mount-proc \
    --kill-child "$PROBE" --token="$TOKEN" --transport=ucx --cache_ucx_port=50052 --member_timeout_ms=1000 \
    --backoff_ms=1000 "$@" 2>&1); then
    echo "$out" | grep -v "^#" | tail -n 60 >&2
    die "probe $*"
  fi
  LAST="$out"
  echo "$out" | grep -E '^(put|get|lookup|member |placed|members: [0-9]+ as)' | sed 's/^/    /'
}
LIST="10.77.0.11:50051,10.77.0.12:50051,10.77.0.13:50051"

# 1. placement and lookup across members.
probe put --cache_service="$LIST" --first=1 --count=300 --write_through
for i in 1 2 3; do probe stats --cache_service="$LIST" --first=1 --count=300 --expect_placed_on="10.77.0.1$i:50051"; done
probe get --cache_service="$LIST" --first=1 --count=300 --expect_hits=300
# UCX over TCP on eth0, nothing shared-memory: the lanes the endpoints use.
lanes=$(echo "$LAST" | grep -E 'lane\[[0-9]+\]' || true)
[[ -n $lanes ]] || die "no UCX endpoint printed (KVC_UCX_PRINT_EP)"
echo "$lanes" | grep -q 'tcp/eth0' || die "UCX lanes are not tcp/eth0: $lanes"
if echo "$lanes" | grep -Eq 'posix|sysv|cma|knem|xpmem'; then die "UCX used shared memory: $lanes"; fi
echo "$lanes" | sort -u | head -n 3 | sed 's/^/    /'
probe lookup --cache_service="$LIST" --first=1 --count=300 --expect_cached=300
ok "1: 300 blocks placed over 3 members as rendezvous hashing says, found and looked up across them, UCX over tcp/eth0"

# 2. a member killed: misses, not errors, within the timeout; writes go elsewhere.
kill_member 2
probe get --cache_service="$LIST" --first=1 --count=300 --expect_missing_on=10.77.0.12:50051 --max_ms=2500
probe lookup --cache_service="$LIST" --first=1 --count=300 --max_ms=2500
probe put --cache_service="$LIST" --first=1001 --count=100
probe get --cache_service="$LIST" --first=1001 --count=100 --expect_hits=100
ok "2: m2 SIGKILLed: exactly its keys miss (no error, < 2.5 s), new blocks stored on m1 and m3"

# 3. restarted: its durable blocks are back, what went elsewhere is still found.
start_member 2
probe get --cache_service="$LIST" --first=1 --count=300 --expect_hits=300
probe get --cache_service="$LIST" --first=1001 --count=100 --expect_hits=100 \
  --expect_fallback_on=10.77.0.12:50051
ok "3: m2 restarted: its write-through blocks served again; blocks written meanwhile found on their fallback"

# 3b. a host gone silent (its link down: no answer, no reset) costs the timeout once, not a hang.
ip -n "${P}m3" link set eth0 down
probe get --cache_service="$LIST" --first=1 --count=300 --expect_missing_on=10.77.0.13:50051 --max_ms=2500
probe put --cache_service="$LIST" --first=1101 --count=50
ip -n "${P}m3" link set eth0 up
ok "3b: m3 unreachable (link down): exactly its keys miss within the 1 s member timeout, writes go elsewhere"

# 4. members from DNS, one added while a client runs.
mkdir -p "/etc/netns/${P}c"
hosts() {
  {
    echo "127.0.0.1 localhost"
    for i in "$@"; do echo "10.77.0.1$i kvcached.kvc"; done
  } >"/etc/netns/${P}c/hosts.new"
  # Rewritten in place: a running client's /etc/hosts is a bind mount of this inode.
  cat "/etc/netns/${P}c/hosts.new" >"/etc/netns/${P}c/hosts"
  rm -f "/etc/netns/${P}c/hosts.new"
}
hosts 1 2 3
DNS="dns:///kvcached.kvc:50051"
timeout 60 ip netns exec "${P}c" unshare --ipc --pid --fork --mount-proc --kill-child "$PROBE" --token="$TOKEN" \
  --transport=ucx --cache_ucx_port=50052 --cache_service="$DNS" --refresh_ms=200 --expect_members=4 --wait_ms=30000 \
  members >"$WORK/members.out" 2>&1 &
WATCHER=$!
for _ in $(seq 1 200); do
  grep -q '^members: .*,.*,' "$WORK/members.out" && break
  sleep 0.05
done
grep -q '^members: 10.77.0.11:50051,10.77.0.12:50051,10.77.0.13:50051$' "$WORK/members.out" ||
  die "the DNS client did not start with 3 members: $(cat "$WORK/members.out")"
start_member 4
hosts 1 2 3 4
wait "$WATCHER" || die "the running client did not see the 4th member: $(grep -v '^{' "$WORK/members.out")"
grep -E '^(members|cluster)' "$WORK/members.out" | sed 's/^/    /'
probe get --cache_service="$DNS" --first=1 --count=300 --expect_hits=300 --expect_fallback_on=10.77.0.14:50051
probe lookup --cache_service="$DNS" --first=1 --count=300 --expect_cached=300
probe put --cache_service="$DNS" --first=3001 --count=200
probe stats --cache_service="$DNS" --first=3001 --count=200 --expect_placed_on=10.77.0.14:50051
ok "4: m4 added to the DNS name: a running client picked it up; only its share of keys moved (found on their old member), new blocks take it"

# 5. the worker itself against the cluster.
if [[ -n $WORKER && -f $MODEL_DIR/model.bin && -f $MODEL_DIR/tokenizer.bin ]]; then
  PROMPT="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her \
friends. One day, she saw a big red ball under a tree. She ran to the ball and picked it up. It was shiny and new. \
Lily wanted to share the ball with her friends, so she called them over. They played catch and laughed all day."
  worker() {
    local out
    if ! out=$(timeout 90 ip netns exec "${P}c" unshare --ipc --pid --fork --mount-proc --kill-child "$WORKER" generate \
      --model="$MODEL_DIR/model.bin" --tokenizer="$MODEL_DIR/tokenizer.bin" --threads=2 --cache_service="$DNS" \
      --cache_ucx_port=50052 --transport=ucx --cache_token="$TOKEN" --cache_tenant=a --cache_model=stories15M \
      --block_tokens=16 --prefix_exact=false --steps=24 --cache_member_timeout_ms=1000 --prompt="$PROMPT" "$@" 2>&1); then
      echo "$out" | tail -n 20 >&2
      die "kvc-worker generate $*"
    fi
    WOUT="$out"
    echo "$out" | grep -E '^cache (service|cluster)' | sed 's/^/    /'
  }
  worker --policy=full
  echo "$WOUT" | grep -q 'cache cluster: 4 members' || die "the worker did not see 4 members"
  worker --policy=full
  loaded=$(echo "$WOUT" | sed -n 's/.*prefix \([0-9]*\) of .*/\1/p')
  [[ ${loaded:-0} -gt 0 ]] || die "the second run loaded no prefix from the cluster"
  kill_member 1
  worker --policy=refreshkv:k=32,stride=4
  echo "$WOUT" | grep -Eq 'cache cluster: 4 members \([0-9]+ down\), [1-9][0-9]* member failures' ||
    die "the worker did not report the killed member"
  ok "5: kvc-worker over the DNS name: wrote through, loaded a ${loaded}-token prefix back, ran on with m1 killed"
else
  echo "    (kvc-worker or the stories15M model not given: step 5 not run)"
fi

echo "PASSED: netns cluster test in $(elapsed) s"
