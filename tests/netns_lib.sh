# Shared by the multi-host tests (tests/netns_*_test.sh), sourced after
# `set -euo pipefail`: several "hosts" on one machine, each a network
# namespace with eth0 on a bridge that lives in a namespace too, so the
# host's own network gets no links.
#
#   netns_init BASE WATCHDOG_S   checks root and ip netns (else exit 77),
#                                removes namespaces of dead earlier runs,
#                                sets P=BASE<pid>, WORK (a temp dir), the
#                                EXIT trap (kills what it started, deletes
#                                the namespaces, shows logs on failure) and
#                                a watchdog that ends the run after
#                                WATCHDOG_S seconds
#   netns_bridge                 namespace ${P}sw with bridge br0
#   host NAME ADDR               namespace ${P}NAME, eth0 = ADDR/24 on br0
#   isolated NS CMD...           exec CMD in NS with its own IPC and pid
#                                namespaces (UCX cannot share memory across
#                                them), dying with this script
#   ok MSG / die MSG / skip MSG / elapsed
# Logs shown on failure: $WORK/*.log and $WORK/*/log.

skip() {
  echo "SKIPPED: $*"
  exit 77
}
die() {
  echo "FAILED: $*" >&2
  exit 1
}
elapsed() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}
ok() { echo "[$(elapsed) s] ok: $*"; }

netns_init() {
  local base=$1
  WATCHDOG_S=$2
  [[ $(id -u) -eq 0 ]] || skip "the multi-host test needs root for ip netns (uid $(id -u))"
  command -v ip >/dev/null || skip "no ip command (iproute2)"
  command -v unshare >/dev/null || skip "no unshare command (util-linux)"
  unshare --help 2>&1 | grep -q -- --kill-child || skip "unshare has no --kill-child"
  # Namespaces of earlier runs whose process is gone (a SIGKILLed run).
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${base}[0-9]+[a-z]" || true); do
    pid=${ns#"$base"}
    pid=${pid%%[a-z]*}
    if ! kill -0 "$pid" 2>/dev/null; then
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
      rm -rf "/etc/netns/$ns"
      echo "removed namespace $ns of an earlier run"
    fi
  done
  P="${base}$$"
  T0=$(date +%s%N)
  ip netns add "${P}probe" 2>/dev/null || skip "cannot create a network namespace here"
  ip netns del "${P}probe"
  WORK=$(mktemp -d "/tmp/${base}-netns.XXXXXX")
  NETNS=()
  PIDS=()
  MADE_ETC_NETNS=0
  [[ -d /etc/netns ]] || MADE_ETC_NETNS=1
  PDEATH=()
  setpriv --help 2>&1 | grep -q -- --pdeathsig && PDEATH=(setpriv --pdeathsig KILL)
  trap netns_cleanup EXIT
  trap 'echo "interrupted"; exit 130' INT TERM
  netns_watchdog &
  WATCHDOG=$!
}

netns_cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ -n ${WATCHDOG:-} ]] && kill -TERM "$WATCHDOG" 2>/dev/null
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  # Whatever still runs inside our namespaces (clients under timeout(1), ...).
  for ns in "${NETNS[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null; done
  wait 2>/dev/null
  for ns in "${NETNS[@]}"; do
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  [[ $MADE_ETC_NETNS -eq 1 ]] && rmdir /etc/netns 2>/dev/null
  if [[ $rc -ne 0 ]]; then
    for log in "$WORK"/*.log "$WORK"/*/log; do
      [[ -s $log ]] && { echo "--- $log (last lines)"; tail -n 20 "$log"; }
    done
  fi
  rm -rf "$WORK"
  local left
  left=$(ip netns list | grep -c "^$P" || true)
  [[ $left -eq 0 ]] || echo "WARNING: $left namespaces of $P left"
  exit "$rc"
}

# A hung step ends the run (and its cleanup) before ctest's timeout.
netns_watchdog() {
  sleep "$WATCHDOG_S" &
  local s=$!
  trap 'kill $s 2>/dev/null; exit 0' TERM
  wait "$s"
  echo "FAILED: watchdog: the test ran $WATCHDOG_S s" >&2
  kill -TERM $$
}

make_ns() {
  ip netns add "$1"
  NETNS+=("$1")
  ip -n "$1" link set lo up
}

netns_bridge() {
  SW="${P}sw"
  make_ns "$SW"
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
}

host() {
  local ns="${P}$1"
  make_ns "$ns"
  ip link add "${P}$1" netns "$ns" type veth peer name "${P}$1b" netns "$SW"
  ip -n "$ns" link set "${P}$1" name eth0
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$SW" link set "${P}$1b" master br0 up
}

# Only in a subshell or as the last command: it execs. Run in the
# background, $! is unshare itself (killing it kills CMD).
isolated() {
  local ns=$1
  shift
  exec "${PDEATH[@]}" ip netns exec "$ns" unshare --ipc --pid --fork --mount-proc --kill-child "$@"
}
