#!/usr/bin/env bash
# Validates the deployment without a cluster.
#
#   deploy/check.sh                         # static checks only
#   deploy/check.sh KVCACHED [KVC_WORKER]   # ... plus the binaries:
#       build/cachesvc/server/kvcached build/worker/kvc-worker
#
# Checks (deploy/check_manifests.py has the details):
#   * every YAML file under deploy/ parses; kustomization inputs exist; no
#     hard-coded metadata.namespace; examples stay out of the kustomizations;
#   * every variant deploy/render.sh renders (base and each overlay, alone
#     and with the components) — kubectl kustomize, offline:
#       - kvcached's config (the rendered ConfigMap --config points into)
#         uses only keys kvcached knows (cachesvc/server/options.cc) and
#         passes the cross-field rules;
#       - memory limit > host_capacity_bytes + disk_block_cache_bytes +
#         headroom; PVC >= 1.25 x disk_capacity_bytes;
#         terminationGracePeriodSeconds > shutdown_grace + preStop;
#       - ports agree between the config, containerPorts, the gRPC health
#         probes (TCP ones under TLS), Services, annotations and the
#         NetworkPolicy (gRPC, UCX listener, UCX_TCP_PORT_RANGE);
#       - more than one member => anti-affinity / spread over nodes, and
#         workers on the headless Service over gRPC;
#       - the worker (`kvc-worker serve`, started by the image's entrypoint,
#         which must exec it): every FLAGS_* and arg is a kvc-worker flag
#         (worker/kvc_worker_main.cc) and none is a request's (FLAGS_prompt,
#         ...), $(VAR) references resolve, the cache service address is
#         <Service>.<ns>.svc... of a Service whose port leads to kvcached's,
#         the token comes from a Secret, the model is baked in or mounted, the
#         memory limit covers it; FLAGS_listen_address binds all interfaces
#         on the containerPort 'grpc', the three probes are gRPC probes on it,
#         a Service selects the pods and leads to it, a PDB selects them;
#         FLAGS_metrics_address agrees with containerPort 'metrics' and the
#         annotation; terminationGracePeriodSeconds > preStop +
#         FLAGS_shutdown_grace + the 30 s write-through flush;
#       - ServiceMonitor/PodMonitor select something with that port name;
#   * with KVCACHED: `kvcached --config=<yaml> --check_config` on every
#     distinct config (data_dir moved to a temp dir, Secret paths dropped);
#   * with KVC_WORKER as well: for each of base and the overlays (alone and
#     with components/tls), a local smoke run — kvcached on loopback with
#     that variant's config (auth on, ports picked by the kernel; a fresh
#     certificate for +tls) and the worker image's entrypoint
#     (deploy/docker/kvc-worker-serve.sh) with the worker's rendered
#     environment, serving on a free loopback port: once its health says
#     SERVING, `kvc-worker ask --wait_for_write_through` twice — the first
#     request writes blocks through, the second loads the cached prefix,
#     neither is degraded, /metrics counts both — then SIGTERM, and it must
#     exit 0 within 20 s.
#
# Exit status: 0 passed; 1 a check failed (one line per problem); 2 bad
# usage or no python3-yaml; 77 kubectl is missing, so the rendered variants
# could not be checked (ctest reports the test as skipped; the file-level
# checks and --check_config of the image's config still ran).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
kvcached="${1:-}"
worker="${2:-}"

# Debian's python3 with python3-yaml (scripts/setup.sh installs it) first,
# then whatever python3 is on PATH.
PY=""
for candidate in /usr/bin/python3 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "check.sh: no python3 with the 'yaml' module; install it: sudo apt-get install -y python3 python3-yaml" >&2
  exit 2
fi
for b in "$kvcached" "$worker"; do
  if [ -n "$b" ] && [ ! -x "$b" ]; then
    echo "check.sh: '$b' is not an executable" >&2
    exit 2
  fi
done

tmp="$(mktemp -d)"
pids=()
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# --------------------------------------------------------------- render
variants=()
render_rc=0
bash "$here/render.sh" "$tmp/rendered" >"$tmp/variants" || render_rc=$?
if [ "$render_rc" -eq 1 ]; then
  echo "check.sh: FAIL: a kustomization does not render (above)" >&2
  exit 1
fi
mapfile -t variants <"$tmp/variants"

# --------------------------------------------------------------- static checks
mkdir -p "$tmp/out"
"$PY" "$here/check_manifests.py" "$repo" "$tmp/out" "$tmp/rendered" "${variants[@]}"

# --------------------------------------------------------------- kvcached --check_config
status=0
if [ -z "$kvcached" ]; then
  echo "check.sh: no kvcached binary given; skipped --check_config (pass build/cachesvc/server/kvcached as \$1)"
else
  for cfgfile in "$tmp"/out/check/*.kvcached.yaml; do
    [ -e "$cfgfile" ] || continue
    name="$(basename "$cfgfile" .kvcached.yaml)"
    if out="$("$kvcached" --config="$cfgfile" --check_config 2>&1)"; then
      echo "check.sh: ok: kvcached --check_config accepts the $name config"
    else
      echo "check.sh: FAIL: kvcached --check_config rejects the $name config:" >&2
      printf '%s\n' "$out" | sed 's/^/    /' >&2
      status=1
    fi
  done
fi

# --------------------------------------------------------------- smoke runs
# The request of every smoke run: 75 tokens, longer than one 64-token block.
smoke_prompt="Once upon a time there was a little girl named Lily. She loved to play outside in the park with her friends. One sunny day she found a big red ball under an old oak tree. She ran to her mother and asked if she could keep it. Her mother smiled and said that she could, but only if she shared it with her friends."
# kvcache-cli from kvc-worker's build directory asks grpc.health.v1, as the
# kubelet's gRPC probes do; without it, a TCP connect stands in.
cli="$(dirname "${worker:-.}")/kvcache-cli"

# free_port: a TCP port of 127.0.0.1 nothing listens on now.
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# serving HOST:PORT: the worker's health is SERVING (or, without kvcache-cli,
# the port accepts a connection).
serving() {
  if [ -x "$cli" ]; then
    timeout 10 "$cli" --target="$1" health >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
  fi
}

# alive PID: the process runs (a child that exited but was not waited for is
# a zombie, which kill -0 still finds).
alive() {
  local st
  st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# smoke VARIANT: kvcached with the variant's config on loopback, and the
# worker image's entrypoint (kvc-worker-serve) with the variant's rendered
# worker environment against it; two requests with `kvc-worker ask`, then
# SIGTERM.
smoke() {
  local v=$1 dir="$tmp/out/smoke/$1" token tenant port uport log pid
  token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  tenant="$(cat "$dir/tenant")"
  printf '%s %s\n' "$tenant" "$token" >"$dir/tokens"
  if [ -f "$dir/tls" ]; then
    # components/tls: a self-signed certificate for 127.0.0.1, which is also
    # the worker's root (its kvcached-ca Secret).
    if ! command -v openssl >/dev/null 2>&1; then
      echo "check.sh: openssl is not installed; skipped the TLS smoke run $v"
      return 0
    fi
    if ! openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kvcached \
      -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$dir/tls.key" -out "$dir/tls.crt" \
      >"$dir/openssl.log" 2>&1; then
      echo "check.sh: FAIL: smoke $v: openssl could not make a certificate:" >&2
      sed 's/^/    /' "$dir/openssl.log" >&2
      return 1
    fi
    cp "$dir/tls.crt" "$dir/ca.crt"
  fi
  log="$dir/kvcached.log"
  "$kvcached" --config="$dir/kvcached.yaml" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    [ -s "$dir/grpc.port" ] && { ! grep -q ucx_listen_address "$dir/kvcached.yaml" || [ -s "$dir/ucx.port" ]; } && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -s "$dir/grpc.port" ]; then
    echo "check.sh: FAIL: smoke $v: kvcached did not start:" >&2
    sed 's/^/    /' "$log" >&2
    return 1
  fi
  port="$(cat "$dir/grpc.port")"
  uport="$(cat "$dir/ucx.port" 2>/dev/null || true)"
  local wport mport
  wport="$(free_port)"
  mport="$(free_port)"
  # The worker's rendered environment, pointed at this kvcached and serving on
  # loopback.
  local envargs=()
  while IFS= read -r line; do envargs+=("$line"); done < <("$PY" - "$dir/worker-env.json" "$port" "$uport" "$token" "$repo" "$wport" "$mport" <<'PY'
import json, os, re, sys
env, port, uport, token, repo = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
wport, mport = sys.argv[6], sys.argv[7]
# The image bakes third_party/<model>/ in at /opt/kvc/models/<model>/ (kvc-worker.Dockerfile).
for k in ("FLAGS_model", "FLAGS_tokenizer"):
    if env.get(k, "").startswith("/opt/kvc/models/"):
        env[k] = os.path.join(repo, "third_party", env[k][len("/opt/kvc/models/"):])
env["FLAGS_cache_service"] = re.sub(r"^(dns:///)?[^:]+:\d+$", lambda m: (m.group(1) or "") + "127.0.0.1:" + port,
                                    env.get("FLAGS_cache_service", ""))
if env.get("FLAGS_cache_ucx"):
    env["FLAGS_cache_ucx"] = "127.0.0.1:" + uport if uport else ""
if env.get("FLAGS_cache_ucx_port", "0") not in ("", "0"):
    env["FLAGS_cache_ucx_port"] = uport or "0"
env["FLAGS_cache_token"] = token
if env.get("FLAGS_cache_tls_ca_file"):
    env["FLAGS_cache_tls_ca_file"] = os.path.join(os.path.dirname(sys.argv[1]), "ca.crt")
env["FLAGS_ucx_net_devices"] = ""          # eth0 in a pod; any here
env["FLAGS_threads"] = "1"
env["FLAGS_steps"] = "16"
env["FLAGS_listen_address"] = "127.0.0.1:" + wport
env["FLAGS_metrics_address"] = "127.0.0.1:" + mport if env.get("FLAGS_metrics_address") else ""
for k, v in sorted(env.items()):
    if "\n" in v:
        sys.exit(f"{k} has a newline")
    print(f"{k}={v}")
PY
)
  local entry wlog="$dir/worker.log" wpid
  entry="$(cat "$dir/entrypoint")"
  env -i PATH="$(dirname "$worker"):/usr/bin:/bin" HOME="$tmp" KVC_WORKER_BIN="$worker" "${envargs[@]}" \
    sh "$entry" >"$wlog" 2>&1 &
  wpid=$!
  pids+=("$wpid")

  # smoke_fail WHAT: the problem, the worker's, the requests' and kvcached's logs;
  # stops both servers.
  smoke_fail() {
    echo "check.sh: FAIL: smoke $v: $1" >&2
    sed 's/^/    worker: /' "$wlog" | tail -30 >&2
    local f
    for f in "$dir"/ask*.err; do [ -e "$f" ] && sed "s/^/    $(basename "$f" .err): /" "$f" | tail -5 >&2; done
    sed 's/^/    kvcached: /' "$log" | tail -15 >&2
    # (with its children: an entrypoint that did not exec leaves kvc-worker one)
    local kids=()
    read -ra kids < <(cat "/proc/$wpid/task/"*/children 2>/dev/null || true)
    for f in "${kids[@]}"; do kill -KILL "$f" 2>/dev/null || true; done
    kill -KILL "$wpid" 2>/dev/null || true
    wait "$wpid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  }

  # Serving within 60 s (loading the model takes about a second).
  for _ in $(seq 1 600); do
    serving "127.0.0.1:$wport" && break
    alive "$wpid" || break
    sleep 0.1
  done
  if ! alive "$wpid" || ! serving "127.0.0.1:$wport"; then
    smoke_fail "$(basename "$entry") did not serve on 127.0.0.1:$wport within 60 s:"
    return 1
  fi
  # The entrypoint must have exec'ed kvc-worker: the process SIGTERM goes to.
  if [ -r "/proc/$wpid/comm" ] && [ "$(cat "/proc/$wpid/comm")" != kvc-worker ]; then
    smoke_fail "$(basename "$entry") did not exec kvc-worker (process $wpid is '$(cat "/proc/$wpid/comm")'): SIGTERM would not reach it"
    return 1
  fi

  # Request 1 computes the prompt and writes its blocks through (the answer
  # waits until the service stored them); request 2 loads the leading block.
  local n rc s1 s2
  for n in 1 2; do
    rc=0
    timeout 120 "$worker" ask --worker="127.0.0.1:$wport" --wait_for_write_through \
      --prompt="$smoke_prompt" --steps=16 >"$dir/ask$n.out" 2>"$dir/ask$n.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
      smoke_fail "kvc-worker ask (request $n) exited with status $rc:"
      return 1
    fi
  done
  s1="$(grep '^worker ' "$dir/ask1.err" || true)"
  s2="$(grep '^worker ' "$dir/ask2.err" || true)"
  if ! printf '%s\n' "$s1" | grep -q '; [1-9][0-9]* blocks written through' ||
     ! printf '%s\n' "$s2" | grep -q ': prefix [1-9][0-9]* of ' ||
     printf '%s\n%s\n' "$s1" "$s2" | grep -q 'DEGRADED'; then
    smoke_fail "request 1 did not write blocks through, or request 2 did not load the cached prefix:"
    return 1
  fi
  # ... and the service took every block (the worker logs what it refused).
  if grep -qE '"level":"error"|"event":"(write_through_(rejected|degraded)|prefix_(lookup|get)_failed|prefix_block_bad|cache_service_lost|cache_member_down)"' "$wlog"; then
    smoke_fail "the worker logged cache-service errors:"
    return 1
  fi

  # /metrics while serving: both requests counted.
  local metrics=""
  if grep -q '^FLAGS_metrics_address=.' < <(printf '%s\n' "${envargs[@]}"); then
    metrics="$("$PY" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
      "http://127.0.0.1:$mport/metrics" 2>&1 || true)"
    if ! printf '%s\n' "$metrics" | grep -q '^kvc_worker_requests_total{code="OK"} 2$'; then
      printf '%s\n' "$metrics" | grep '^kvc_worker_requests' | sed 's/^/    metrics: /' >&2 || true
      smoke_fail "/metrics on 127.0.0.1:$mport does not count the 2 requests (kvc_worker_requests_total{code=\"OK\"} 2)"
      return 1
    fi
    metrics="; /metrics counts 2 requests"
  fi

  # SIGTERM: drain, flush, exit 0 within 20 s.
  local t0 wrc=0
  t0="$(date +%s%N)"
  kill -TERM "$wpid"
  for _ in $(seq 1 200); do
    alive "$wpid" || break
    sleep 0.1
  done
  if alive "$wpid"; then
    smoke_fail "kvc-worker did not exit within 20 s of SIGTERM:"
    return 1
  fi
  wait "$wpid" || wrc=$?
  local secs
  secs="$(( ($(date +%s%N) - t0) / 100000000 ))"
  secs="$((secs / 10)).$((secs % 10))"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$wrc" -ne 0 ] || grep -q 'not flushed' "$wlog"; then
    smoke_fail "kvc-worker exited with status $wrc after SIGTERM (or did not flush its write-through):"
    return 1
  fi
  echo "check.sh: ok: smoke $v: request 1: $(printf '%s\n' "$s1" | grep -o '[0-9]* blocks written through')," \
       "request 2: $(printf '%s\n' "$s2" | grep -o 'prefix [0-9]* of [0-9]* prompt tokens loaded')$metrics;" \
       "SIGTERM: exit 0 after ${secs} s"
}

if [ -n "$kvcached" ] && [ -n "$worker" ] && [ ! -f "$repo/third_party/stories15M/model.bin" ]; then
  echo "check.sh: third_party/stories15M is missing (scripts/setup.sh fetches it); skipped the smoke runs"
elif [ -n "$kvcached" ] && [ -n "$worker" ]; then
  for v in "${variants[@]}"; do
    [ -d "$tmp/out/smoke/$v" ] || continue
    smoke "$v" || status=1
  done
elif [ -n "$kvcached" ]; then
  echo "check.sh: no kvc-worker binary given; skipped the smoke runs (pass build/worker/kvc-worker as \$2)"
fi

if [ "$status" -ne 0 ]; then exit "$status"; fi
if [ "$render_rc" -eq 77 ]; then
  echo "check.sh: SKIPPED the rendered variants: kubectl is not installed (the checks above passed)"
  exit 77
fi
exit 0
