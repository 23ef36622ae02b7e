#!/usr/bin/env bash
# Validates the deployment files without a cluster.
#
#   deploy/check.sh                         # static checks only
#   deploy/check.sh build/cachesvc/server/kvcached
#                                           # ... plus kvcached --check_config on
#                                           #     every config shipped in deploy/
#
# Checks:
#   * every YAML file under deploy/ parses;
#   * every Kubernetes object has apiVersion, kind, metadata.name and no
#     hard-coded metadata.namespace; kustomization resources exist;
#   * the ConfigMap's kvcached.yaml parses and uses only keys kvcached knows
#     (taken from cachesvc/server/options.cc when present);
#   * terminationGracePeriodSeconds > shutdown_grace + preStop sleep;
#   * memory limit > host_capacity_bytes + disk_block_cache_bytes + headroom;
#   * PVC size > disk_capacity_bytes; ports/paths agree between config,
#     container, probes, mounts and Services;
#   * with a kvcached binary as $1: `kvcached --config=<yaml> --check_config`
#     after pointing data_dir at a temp dir and dropping auth/TLS file paths
#     (they name Secret mounts that do not exist outside the pod).
# Exits non-zero with one line per problem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
kvcached="${1:-}"

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
if [ -n "$kvcached" ] && [ ! -x "$kvcached" ]; then
  echo "check.sh: '$kvcached' is not an executable kvcached binary" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The Python part does the static checks and writes the configs for
# --check_config into $tmp (one file per config found).
"$PY" - "$repo" "$tmp" <<'PY'
import glob, os, re, sys
import yaml

repo, tmp = sys.argv[1], sys.argv[2]
deploy = os.path.join(repo, "deploy")
k8s = os.path.join(deploy, "k8s")
errors = []
notes = []

def err(msg):
    errors.append(msg)

def rel(p):
    return os.path.relpath(p, repo)

# ---------------------------------------------------------------- units
BIN = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
       "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
       "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}

def kvc_bytes(v, what):
    """kvcached byte size (common/units.cc ParseByteSize)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(v))
    if not m or m.group(2).lower() not in BIN:
        raise ValueError(f"{what}: '{v}' is not a kvcached byte size (e.g. 8GiB)")
    return int(m.group(1)) * BIN[m.group(2).lower()]

K8S_SUFFIX = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
              "Ei": 2**60, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "P": 10**15, "E": 10**18, "m": 0.001}

def k8s_quantity(v, what):
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(?:[eE]([0-9]+))?([A-Za-z]*)", str(v).strip())
    if not m or m.group(3) not in K8S_SUFFIX:
        raise ValueError(f"{what}: '{v}' is not a Kubernetes quantity")
    n = float(m.group(1)) * (10 ** int(m.group(2)) if m.group(2) else 1)
    return n * K8S_SUFFIX[m.group(3)]

DUR = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}

def absl_duration(v, what):
    """absl::ParseDuration subset: '20s', '1m30s', '1.5s', '0', 'inf' refused."""
    s = str(v).strip()
    if s == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s.lstrip("+"):
        raise ValueError(f"{what}: '{v}' is not a duration (e.g. 20s)")
    return sum(float(a) * DUR[b] for a, b in parts)

def gib(n):
    return f"{n / 2**30:.2f} GiB"

def port_of(addr, what):
    m = re.fullmatch(r".*:(\d+)", str(addr))
    if not m:
        raise ValueError(f"{what}: '{addr}' is not host:port")
    return int(m.group(1))

# ---------------------------------------------------------------- known keys
KNOWN = {"listen_address", "port_file", "data_dir", "host_capacity_bytes", "host_shards",
         "disk_capacity_bytes", "disk_block_cache_bytes", "metrics_address",
         "auth_tokens_file", "tls_cert_file", "tls_key_file", "worker_threads",
         "max_queued_requests", "shutdown_grace", "flush_host_on_shutdown", "log_level",
         "limits.max_block_bytes", "limits.max_batch_blocks", "limits.max_message_bytes",
         "limits.max_lease_ms", "limits.max_lookup_hashes", "limits.max_lookup_layers",
         "limits.max_key_string_bytes"}
opts_cc = os.path.join(repo, "cachesvc", "server", "options.cc")
if os.path.exists(opts_cc):
    found = set(re.findall(r'\{"([a-z_.]+)",\s*(?:Str|Int|Bytes|Bool|Duration|Level)\(',
                           open(opts_cc).read()))
    if found:
        KNOWN = found

def flatten_config(cfg, src):
    keys = set()
    if not isinstance(cfg, dict):
        err(f"{src}: kvcached config must be a YAML mapping")
        return keys
    for k, v in cfg.items():
        if k == "limits":
            if not isinstance(v, dict):
                err(f"{src}: 'limits' must be a mapping")
                continue
            keys |= {f"limits.{lk}" for lk in v}
        else:
            keys.add(k)
    for k in sorted(keys - KNOWN):
        err(f"{src}: unknown kvcached config key '{k}' (kvcached would refuse to start)")
    return keys

def check_config_values(cfg, src):
    """The cross-field rules of ServerOptions::Validate that matter for sizing."""
    try:
        host = kvc_bytes(cfg.get("host_capacity_bytes", "1GiB"), "host_capacity_bytes")
        shards = int(cfg.get("host_shards", 16))
        lim = cfg.get("limits", {}) or {}
        blk = kvc_bytes(lim.get("max_block_bytes", "32MiB"), "limits.max_block_bytes")
        msg = kvc_bytes(lim.get("max_message_bytes", "256MiB"), "limits.max_message_bytes")
        disk = kvc_bytes(cfg.get("disk_capacity_bytes", "16GiB"), "disk_capacity_bytes")
        kvc_bytes(cfg.get("disk_block_cache_bytes", "64MiB"), "disk_block_cache_bytes")
        absl_duration(cfg.get("shutdown_grace", "10s"), "shutdown_grace")
        if shards <= 0 or shards & (shards - 1) or shards > 1024:
            err(f"{src}: host_shards {shards} is not a power of two in [1, 1024]")
        elif host // shards < blk + 256:
            err(f"{src}: host_capacity_bytes / host_shards cannot hold one max_block_bytes block")
        if disk < blk + 256:
            err(f"{src}: disk_capacity_bytes cannot hold one max_block_bytes block")
        if msg < blk + (1 << 16):
            err(f"{src}: limits.max_message_bytes must exceed max_block_bytes by 64 KiB")
        la, ma = cfg.get("listen_address", "127.0.0.1:50051"), cfg.get("metrics_address", "127.0.0.1:9464")
        if la == ma:
            err(f"{src}: metrics_address must differ from listen_address")
        if bool(cfg.get("tls_cert_file")) != bool(cfg.get("tls_key_file")):
            err(f"{src}: set both tls_cert_file and tls_key_file, or neither")
    except (ValueError, TypeError) as e:
        err(f"{src}: {e}")

def write_checkable(cfg, name):
    """Copy for `kvcached --check_config`: local data_dir, no Secret paths."""
    c = dict(cfg)
    c["data_dir"] = os.path.join(tmp, name + ".data")
    for k in ("auth_tokens_file", "tls_cert_file", "tls_key_file", "port_file"):
        c.pop(k, None)
    with open(os.path.join(tmp, name + ".kvcached.yaml"), "w") as f:
        yaml.safe_dump(c, f, sort_keys=False)

# ---------------------------------------------------------------- parse all
files = sorted(set(glob.glob(os.path.join(deploy, "**", "*.yaml"), recursive=True)
                   + glob.glob(os.path.join(deploy, "**", "*.yml"), recursive=True)))
if not files:
    err("no YAML files under deploy/")
docs = []  # (file, index, doc)
for p in files:
    try:
        with open(p) as f:
            loaded = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        err(f"{rel(p)}: does not parse as YAML: {e}")
        continue
    for i, d in enumerate(loaded):
        docs.append((p, i, d))

KUSTOMIZE_KINDS = {"Kustomization", "Component"}
objects = []
for p, i, d in docs:
    where = f"{rel(p)} (document {i + 1})"
    if p.startswith(os.path.join(deploy, "docker") + os.sep):
        continue  # plain kvcached configs, handled below
    if not isinstance(d, dict):
        err(f"{where}: is not a mapping")
        continue
    for f in ("apiVersion", "kind"):
        if not d.get(f):
            err(f"{where}: missing {f}")
    if d.get("kind") in KUSTOMIZE_KINDS:
        base = os.path.dirname(p)
        for r in d.get("resources", []) + d.get("components", []):
            if not os.path.exists(os.path.join(base, r)):
                err(f"{where}: lists '{r}', which does not exist")
        for r in d.get("resources", []):
            if "example" in r or r == "servicemonitor.yaml":
                err(f"{where}: '{r}' must stay out of the default kustomization")
        continue
    md = d.get("metadata")
    if not isinstance(md, dict) or not md.get("name"):
        err(f"{where}: missing metadata.name")
        continue
    if "namespace" in md:
        err(f"{where}: sets metadata.namespace; manifests must be namespace-agnostic")
    objects.append((where, d))

def find(kind, name=None):
    return [(w, d) for w, d in objects
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]

# ---------------------------------------------------------------- docker config
for p in files:
    if p.startswith(os.path.join(deploy, "docker") + os.sep) and p.endswith("kvcached.yaml"):
        with open(p) as f:
            cfg = yaml.safe_load(f)
        flatten_config(cfg, rel(p))
        if isinstance(cfg, dict):
            check_config_values(cfg, rel(p))
            write_checkable(cfg, "docker")

# ---------------------------------------------------------------- ConfigMap
cms = find("ConfigMap", "kvcached-config")
sts = find("StatefulSet", "kvcached")
if len(cms) != 1:
    err(f"expected exactly one ConfigMap 'kvcached-config', found {len(cms)}")
if len(sts) != 1:
    err(f"expected exactly one StatefulSet 'kvcached', found {len(sts)}")

cfg = None
if len(cms) == 1:
    where, cm = cms[0]
    text = (cm.get("data") or {}).get("kvcached.yaml")
    if text is None:
        err(f"{where}: ConfigMap has no data key 'kvcached.yaml'")
    else:
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            err(f"{where}: embedded kvcached.yaml does not parse: {e}")
        if cfg is not None:
            flatten_config(cfg, f"{where} kvcached.yaml")
            if isinstance(cfg, dict):
                check_config_values(cfg, f"{where} kvcached.yaml")
                write_checkable(cfg, "configmap")
            else:
                cfg = None

# ---------------------------------------------------------------- StatefulSet vs config
if cfg is not None and len(sts) == 1:
    where, ss = sts[0]
    spec = ss.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    ctrs = [c for c in pod.get("containers", []) if c.get("name") == "kvcached"]
    if not ctrs:
        err(f"{where}: no container named 'kvcached'")
    else:
        c = ctrs[0]
        try:
            # --- shutdown
            grace = absl_duration(cfg.get("shutdown_grace", "10s"), "shutdown_grace")
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            pre = 0.0
            cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
            if len(cmd) >= 2 and os.path.basename(str(cmd[0])) == "sleep":
                pre = float(cmd[1])
            sleep_action = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {})
            if "seconds" in sleep_action:
                pre = float(sleep_action["seconds"])
            if not tgps > grace + pre:
                err(f"{where}: terminationGracePeriodSeconds ({tgps}s) must exceed shutdown_grace "
                    f"({grace:g}s) + preStop sleep ({pre:g}s), with room for the host-tier flush")
            else:
                notes.append(f"shutdown: terminationGracePeriodSeconds {tgps}s > shutdown_grace {grace:g}s "
                             f"+ preStop {pre:g}s (flush budget {tgps - grace - pre:g}s)")

            # --- memory
            host = kvc_bytes(cfg.get("host_capacity_bytes", "1GiB"), "host_capacity_bytes")
            bc = kvc_bytes(cfg.get("disk_block_cache_bytes", "64MiB"), "disk_block_cache_bytes")
            res = c.get("resources") or {}
            lim = (res.get("limits") or {}).get("memory")
            req = (res.get("requests") or {}).get("memory")
            if lim is None:
                err(f"{where}: container kvcached has no memory limit")
            else:
                limit = k8s_quantity(lim, "resources.limits.memory")
                headroom = max(1 << 30, host // 4)
                need = host + bc + headroom
                if not limit > host + bc:
                    err(f"{where}: memory limit {lim} ({gib(limit)}) must exceed host_capacity_bytes "
                        f"({gib(host)}) + disk_block_cache_bytes ({gib(bc)})")
                elif limit < need:
                    err(f"{where}: memory limit {lim} ({gib(limit)}) leaves only {gib(limit - host - bc)} "
                        f"above host tier + block cache; need >= {gib(headroom)} "
                        f"(max(1 GiB, 25% of host_capacity_bytes)) for RocksDB memtables, gRPC buffers "
                        f"and fragmentation")
                else:
                    notes.append(f"memory: limit {gib(limit)} = host {gib(host)} + block cache {gib(bc)} "
                                 f"+ headroom {gib(limit - host - bc)}")
                if req is not None and k8s_quantity(req, "requests.memory") != limit:
                    notes.append(f"memory: request {req} != limit {lim} (pod is not memory-guaranteed)")

            # --- disk
            disk = kvc_bytes(cfg.get("disk_capacity_bytes", "16GiB"), "disk_capacity_bytes")
            dd = cfg.get("data_dir")
            mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts", [])}
            vct = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
            data_vol = mounts.get(dd)
            if data_vol is None or data_vol not in vct:
                err(f"{where}: data_dir '{dd}' is not the mountPath of a volumeClaimTemplate")
            else:
                size = k8s_quantity(vct[data_vol]["spec"]["resources"]["requests"]["storage"], "storage")
                if size < disk * 1.25:
                    err(f"{where}: PVC '{data_vol}' ({gib(size)}) must be >= 1.25 x disk_capacity_bytes "
                        f"({gib(disk)}) for RocksDB space amplification")
                else:
                    notes.append(f"disk: PVC {gib(size)} for disk_capacity_bytes {gib(disk)}")

            # --- config file is where --config points
            args = c.get("args", []) + c.get("command", [])
            conf = [a.split("=", 1)[1] for a in args if str(a).startswith("--config=")]
            cm_vol = [v["name"] for v in pod.get("volumes", [])
                      if (v.get("configMap") or {}).get("name") == "kvcached-config"]
            if not conf:
                err(f"{where}: container args have no --config=")
            elif not cm_vol or os.path.join(
                    next((mp for mp, n in mounts.items() if n == cm_vol[0]), "/nonexistent"),
                    "kvcached.yaml") != conf[0]:
                err(f"{where}: --config={conf[0]} is not the ConfigMap's kvcached.yaml as mounted")

            # --- auth tokens file lives in a mounted Secret
            atf = cfg.get("auth_tokens_file")
            if atf:
                d_, key = os.path.split(atf)
                vol = mounts.get(d_)
                sec = [v for v in pod.get("volumes", []) if v.get("name") == vol and "secret" in v]
                if not sec:
                    err(f"{where}: auth_tokens_file {atf} is not inside a mounted Secret volume")
                else:
                    sname = sec[0]["secret"]["secretName"]
                    for w, s in find("Secret", sname):
                        data = set((s.get("data") or {})) | set((s.get("stringData") or {}))
                        if key not in data:
                            err(f"{w}: example Secret {sname} has no key '{key}' (auth_tokens_file)")
            else:
                notes.append("auth: auth_tokens_file is empty — authentication DISABLED")

            # --- ports agree
            gport = port_of(cfg.get("listen_address", "127.0.0.1:50051"), "listen_address")
            mport = port_of(cfg.get("metrics_address", "127.0.0.1:9464"), "metrics_address")
            if not str(cfg.get("listen_address", "")).startswith(("0.0.0.0:", "[::]:")):
                err(f"{where}: listen_address must bind all interfaces in a pod (0.0.0.0:PORT)")
            if cfg.get("metrics_address") and not str(cfg["metrics_address"]).startswith(("0.0.0.0:", "[::]:")):
                err(f"{where}: metrics_address must bind all interfaces in a pod (0.0.0.0:PORT)")
            cports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            if cports.get("grpc") != gport:
                err(f"{where}: containerPort 'grpc' {cports.get('grpc')} != listen_address port {gport}")
            if cports.get("metrics") != mport:
                err(f"{where}: containerPort 'metrics' {cports.get('metrics')} != metrics_address port {mport}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if not pr:
                    err(f"{where}: missing {probe}")
                elif (pr.get("grpc") or {}).get("port") != gport:
                    err(f"{where}: {probe} must be a grpc probe on port {gport}")
            ann = (spec.get("template", {}).get("metadata", {}).get("annotations") or {})
            if str(ann.get("prometheus.io/port")) != str(mport):
                err(f"{where}: prometheus.io/port annotation != metrics port {mport}")

            # --- security
            sc = c.get("securityContext") or {}
            psc = pod.get("securityContext") or {}
            if not sc.get("readOnlyRootFilesystem"):
                err(f"{where}: readOnlyRootFilesystem must be true")
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                err(f"{where}: runAsNonRoot must be true")

            # --- services select the pods
            labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
            sel = spec.get("selector", {}).get("matchLabels", {})
            if any(labels.get(k) != v for k, v in sel.items()):
                err(f"{where}: selector does not match the pod template labels")
            svc_name = spec.get("serviceName")
            heads = find("Service", svc_name)
            if not heads or heads[0][1]["spec"].get("clusterIP") != "None":
                err(f"{where}: serviceName '{svc_name}' must be a headless Service (clusterIP: None)")
            for w, s in find("Service"):
                ssel = s["spec"].get("selector", {})
                if any(labels.get(k) != v for k, v in ssel.items()):
                    err(f"{w}: selector does not match the kvcached pods")
                for sp in s["spec"].get("ports", []):
                    tp = sp.get("targetPort")
                    if isinstance(tp, str) and tp not in cports:
                        err(f"{w}: targetPort '{tp}' is not a container port name")
            for w, pdb in find("PodDisruptionBudget"):
                psel = pdb["spec"].get("selector", {}).get("matchLabels", {})
                if any(labels.get(k) != v for k, v in psel.items()):
                    err(f"{w}: selector does not match the kvcached pods")
        except (ValueError, KeyError, TypeError) as e:
            err(f"{where}: {type(e).__name__}: {e}")

for n in notes:
    print(f"check.sh: ok: {n}")
if errors:
    for e in errors:
        print(f"check.sh: FAIL: {e}", file=sys.stderr)
    sys.exit(1)
print(f"check.sh: {len(files)} YAML files, {len(objects)} Kubernetes objects: static checks passed")
PY

if [ -z "$kvcached" ]; then
  echo "check.sh: no kvcached binary given; skipped --check_config (pass build/cachesvc/server/kvcached as \$1)"
  exit 0
fi

status=0
for cfgfile in "$tmp"/*.kvcached.yaml; do
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
exit $status
