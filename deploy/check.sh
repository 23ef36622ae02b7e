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
#       - the worker: every FLAGS_* is a kvc-worker flag
#         (worker/kvc_worker_main.cc), $(VAR) references resolve, the cache
#         service address is <Service>.<ns>.svc... of a Service whose port
#         leads to kvcached's, the token comes from a Secret, the model is
#         baked in or mounted, the memory limit covers it, probes read the
#         heartbeat files on a writable volume;
#       - ServiceMonitor/PodMonitor select something with that port name;
#   * with KVCACHED: `kvcached --config=<yaml> --check_config` on every
#     distinct config (data_dir moved to a temp dir, Secret paths dropped);
#   * with KVC_WORKER as well: for each of base and the overlays, a local
#     smoke run — kvcached on loopback with that variant's config (auth on,
#     ports picked by the kernel) and deploy/docker/kvc-worker-loop.sh with
#     the worker's rendered environment, twice: both runs store blocks in
#     the service, the second loads the cached prefix.
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
# smoke VARIANT: kvcached with the variant's config and kvc-worker-loop with
# its worker environment, on loopback.
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
  # The worker's rendered environment, pointed at this kvcached.
  local envargs=()
  while IFS= read -r line; do envargs+=("$line"); done < <("$PY" - "$dir/worker-env.json" "$port" "$uport" "$token" "$repo" <<'PY'
import json, os, re, sys
env, port, uport, token, repo = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
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
env["FLAGS_metrics_address"] = ""          # its exporter takes 2 s to stop
env["KVC_WORKER_RUNS"] = "2"
env["KVC_WORKER_PAUSE_SECONDS"] = "0"
for k, v in sorted(env.items()):
    if "\n" in v:
        sys.exit(f"{k} has a newline")
    print(f"{k}={v}")
PY
)
  local wlog="$dir/worker.log" rc=0
  env -i PATH="$(dirname "$worker"):/usr/bin:/bin" HOME="$tmp" KVC_WORKER_BIN="$worker" \
    KVC_WORKER_STATE_DIR="$dir/state" "${envargs[@]}" \
    timeout 120 sh "$repo/deploy/docker/kvc-worker-loop.sh" >"$wlog" 2>&1 || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local summary
  summary="$(grep '^cache service' "$wlog" || true)"
  # Run 1 computes the prompt and stores its blocks; run 2 loads the leading
  # block instead (and has nothing new to store).
  if [ "$rc" -ne 0 ] || [ "$(printf '%s\n' "$summary" | wc -l)" -ne 2 ] ||
     ! printf '%s\n' "$summary" | head -1 | grep -q 'stored [1-9]' ||
     ! printf '%s\n' "$summary" | tail -1 | grep -q 'prefix [1-9][0-9]* of' ||
     printf '%s\n' "$summary" | grep -q 'DEGRADED\|rejected [1-9]\|dropped [1-9]\|not flushed'; then
    echo "check.sh: FAIL: smoke $v: kvc-worker-loop (exit $rc) did not store and reuse blocks:" >&2
    sed 's/^/    worker: /' "$wlog" | tail -30 >&2
    sed 's/^/    kvcached: /' "$log" | tail -15 >&2
    return 1
  fi
  echo "check.sh: ok: smoke $v: run 1: $(printf '%s\n' "$summary" | head -1 | grep -o 'write-through stored [0-9]* blocks')," \
       "run 2: $(printf '%s\n' "$summary" | tail -1 | grep -o '^cache service ([a-z]*): prefix [0-9]* of [0-9]* prompt tokens loaded')"
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
