"""Consistency checks of the deployment, run by deploy/check.sh.

  python3 deploy/check_manifests.py REPO OUT RENDERED_DIR [VARIANT...]

REPO is the repository root; OUT an empty directory for the configs that
check.sh then feeds to `kvcached --check_config` (OUT/check/*.kvcached.yaml)
and to the local smoke run (OUT/smoke/<variant>/); RENDERED_DIR holds
deploy/render.sh's output, one <variant>.yaml per VARIANT (none: kubectl was
missing, and only the file-level checks run).

The schema of every object is deploy/validate's job; this checks what a
schema cannot: that the pieces agree with each other and with kvcached's and
kvc-worker's own options. Prints one line per problem to stderr and exits 1
when there is one.
"""
import glob
import json
import math
import os
import re
import sys

import yaml

repo, out, rendered_dir = sys.argv[1], sys.argv[2], sys.argv[3]
variants = sys.argv[4:]
deploy = os.path.join(repo, "deploy")
k8s = os.path.join(deploy, "k8s")
errors = []
notes = []

# The Deployment's pods run in some namespace; expansions use this one.
NAMESPACE = "kvcache-check"


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
    """absl::ParseDuration subset: '20s', '1m30s', '1.5s', '0'."""
    s = str(v).strip()
    if s == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s.lstrip("+"):
        raise ValueError(f"{what}: '{v}' is not a duration (e.g. 20s)")
    return sum(float(a) * DUR[b] for a, b in parts)


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def split_hostport(addr, what):
    m = re.fullmatch(r"(.*):(\d+)", str(addr))
    if not m:
        raise ValueError(f"{what}: '{addr}' is not host:port")
    return m.group(1), int(m.group(2))


def binds_all(addr):
    return str(addr).startswith(("0.0.0.0:", "[::]:"))


# ---------------------------------------------------------------- what the binaries accept
KNOWN = set()
opts_cc = os.path.join(repo, "cachesvc", "server", "options.cc")
if os.path.exists(opts_cc):
    KNOWN = set(re.findall(r'\{"([a-z_.]+)",\s*(?:Str|Int|Bytes|Bool|Duration|Level)\(',
                           open(opts_cc).read()))
if not KNOWN:
    err(f"{rel(opts_cc)}: cannot read kvcached's config keys")

WORKER_FLAGS = set()
WORKER_DEFAULTS = {}  # flag -> default as a flag value ("0.0.0.0:50061", "30s"), where readable
worker_main = os.path.join(repo, "worker", "kvc_worker_main.cc")
if os.path.exists(worker_main):
    t = open(worker_main).read()
    WORKER_FLAGS = set(re.findall(r"ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)\s*,", t))
    for name, d in re.findall(r'ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)\s*,\s*("(?:[^"\\]|\\.)*"|[^,]+?)\s*,', t):
        m = re.fullmatch(r"absl::Seconds\((\d+)\)", d)
        WORKER_DEFAULTS[name] = d[1:-1] if d.startswith('"') else (m.group(1) + "s" if m else d)
if not WORKER_FLAGS:
    err(f"{rel(worker_main)}: cannot read kvc-worker's flags")
# `kvc-worker serve` on SIGTERM: admitted requests get --shutdown_grace, then
# the write-through is flushed for up to this long (worker/kvc_worker_main.cc,
# Serve()).
WORKER_FLUSH_SECONDS = 30
# Flags `kvc-worker serve` ignores: a request carries them (GenerateRequest),
# or they are `ask`'s. Left in the worker's environment they mislead.
WORKER_REQUEST_FLAGS = ("prompt", "temperature", "top_p", "seed", "worker", "wait_for_write_through")

# Files baked into the worker image: COPY destinations under /opt of
# kvc-worker.Dockerfile, and the model's size (the llama2.c checkpoint and
# tokenizer of scripts/fetch_data.sh).
worker_df = os.path.join(deploy, "docker", "kvc-worker.Dockerfile")
BAKED_DIRS = []
# The image's entrypoint: the file of the repository that ENTRYPOINT runs
# (COPYed from the context), which must exec `kvc-worker serve` so SIGTERM
# reaches kvc-worker. The smoke run of check.sh starts the same file.
WORKER_ENTRYPOINT = None
if os.path.exists(worker_df):
    t = open(worker_df).read()
    BAKED_DIRS = re.findall(r"^COPY\s+--from=\S+\s+\S+\s+(/opt/\S+)", t, re.M)
    eps = re.findall(r'^ENTRYPOINT\s+\[\s*"([^"]+)"', t, re.M)
    copies = {dst: src for src, dst in re.findall(r"^COPY\s+(?!--)(\S+)\s+(\S+)\s*$", t, re.M)}
    if not eps:
        err(f"{rel(worker_df)}: no ENTRYPOINT [\"...\"] (exec form)")
    elif eps[-1] not in copies:
        err(f"{rel(worker_df)}: ENTRYPOINT {eps[-1]} is not a file COPYed from the repository")
    else:
        WORKER_ENTRYPOINT = os.path.join(repo, copies[eps[-1]])
        if not os.path.isfile(WORKER_ENTRYPOINT):
            err(f"{rel(worker_df)}: ENTRYPOINT {eps[-1]} is COPYed from {copies[eps[-1]]}, which does not exist")
            WORKER_ENTRYPOINT = None
        elif not re.search(r"^\s*exec\s+\S+\s+serve\b", open(WORKER_ENTRYPOINT).read(), re.M):
            err(f"{rel(WORKER_ENTRYPOINT)}: the worker image's entrypoint must `exec <kvc-worker> serve ...` "
                f"(exec: SIGTERM must reach kvc-worker, which drains and flushes)")
else:
    err(f"{rel(worker_df)}: missing")
MODEL_BYTES = {}
fetch = os.path.join(repo, "scripts", "fetch_data.sh")
if os.path.exists(fetch):
    t = open(fetch).read()
    mb = re.search(r"^MODEL_BYTES=(\d+)", t, re.M)
    tb = re.search(r"^TOKENIZER_BYTES=(\d+)", t, re.M)
    if mb and tb:
        MODEL_BYTES = {"model.bin": int(mb.group(1)), "tokenizer.bin": int(tb.group(1))}

# ---------------------------------------------------------------- kvcached config
def flatten_config(cfg, src):
    if not isinstance(cfg, dict):
        err(f"{src}: kvcached config must be a YAML mapping")
        return
    keys = set()
    for k, v in cfg.items():
        if k == "limits":
            if not isinstance(v, dict):
                err(f"{src}: 'limits' must be a mapping")
                continue
            keys |= {f"limits.{lk}" for lk in v}
        else:
            keys.add(k)
    for k in sorted(keys - KNOWN) if KNOWN else []:
        err(f"{src}: unknown kvcached config key '{k}' (kvcached would refuse to start)")


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
        ua = cfg.get("ucx_listen_address")
        if ua and ua == la:
            err(f"{src}: ucx_listen_address must differ from listen_address")
        if bool(cfg.get("tls_cert_file")) != bool(cfg.get("tls_key_file")):
            err(f"{src}: set both tls_cert_file and tls_key_file, or neither")
    except (ValueError, TypeError) as e:
        err(f"{src}: {e}")


checkable = {}  # content -> name


def write_checkable(cfg, name):
    """Copy for `kvcached --check_config`: local data_dir, no Secret paths."""
    c = dict(cfg)
    for k in ("auth_tokens_file", "tls_cert_file", "tls_key_file", "port_file", "ucx_port_file"):
        c.pop(k, None)
    key = json.dumps(c, sort_keys=True, default=str)
    if key in checkable:
        return
    checkable[key] = name
    c["data_dir"] = os.path.join(out, "check", name + ".data")
    os.makedirs(os.path.join(out, "check"), exist_ok=True)
    with open(os.path.join(out, "check", name + ".kvcached.yaml"), "w") as f:
        yaml.safe_dump(c, f, sort_keys=False)


# ---------------------------------------------------------------- files
files = []
for pattern in ("*.yaml", "*.yml"):
    files += glob.glob(os.path.join(deploy, "**", pattern), recursive=True)
files = sorted(p for p in set(files) if os.sep + "node_modules" + os.sep not in p)
if not files:
    err("no YAML files under deploy/")
raw = {}  # path -> [docs]
for p in files:
    try:
        with open(p) as f:
            raw[p] = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        err(f"{rel(p)}: does not parse as YAML: {e}")

KUSTOMIZE_KINDS = {"Kustomization", "Component"}
example_secrets = {}  # name -> set of keys
example_tenants = set()
for p, docs in raw.items():
    if p.startswith(os.path.join(deploy, "docker") + os.sep):
        continue  # plain kvcached configs, below
    if p.startswith(k8s + os.sep) and (os.sep + "config" + os.sep in p or os.path.basename(p) == "kvcached.yaml"):
        continue  # configMapGenerator inputs, checked through the rendered ConfigMaps
    for i, d in enumerate(docs):
        where = f"{rel(p)} (document {i + 1})"
        if not isinstance(d, dict):
            err(f"{where}: is not a mapping")
            continue
        for f in ("apiVersion", "kind"):
            if not d.get(f):
                err(f"{where}: missing {f}")
        if d.get("kind") in KUSTOMIZE_KINDS:
            base = os.path.dirname(p)
            listed = list(d.get("resources", [])) + list(d.get("components", []))
            for g in d.get("configMapGenerator", []) or []:
                listed += [x.split("=", 1)[-1] for x in g.get("files", []) or []]
                listed += list(g.get("envs", []) or [])
            for r in listed:
                if not os.path.exists(os.path.join(base, r)):
                    err(f"{where}: lists '{r}', which does not exist")
            for r in d.get("resources", []):
                if "example" in r:
                    err(f"{where}: '{r}' must stay out of the kustomization (create real Secrets with kubectl)")
            continue
        md = d.get("metadata")
        if not isinstance(md, dict) or not md.get("name"):
            err(f"{where}: missing metadata.name")
            continue
        if "namespace" in md:
            err(f"{where}: sets metadata.namespace; manifests must be namespace-agnostic")
        if d.get("kind") == "Secret" and "example" in os.path.basename(p):
            keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
            example_secrets[md["name"]] = keys
            tokens = (d.get("stringData") or {}).get("tokens")
            if tokens:
                for line in tokens.splitlines():
                    line = line.split("#", 1)[0].split()
                    if len(line) >= 2:
                        example_tenants.add(line[0])

for p, docs in raw.items():
    if p.startswith(os.path.join(deploy, "docker") + os.sep) and p.endswith("kvcached.yaml") and docs:
        flatten_config(docs[0], rel(p))
        if isinstance(docs[0], dict):
            check_config_values(docs[0], rel(p))
            write_checkable(docs[0], "docker")


# ---------------------------------------------------------------- rendered variants
def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_template(obj):
    return ((obj.get("spec") or {}).get("template") or {})


def containers(obj):
    return (pod_template(obj).get("spec") or {}).get("containers") or []


def arg_value(args, flag):
    vals = [a.split("=", 1)[1] for a in args if str(a).startswith(f"--{flag}=")]
    return vals[-1] if vals else None


def expand_env(c, pod, objs, where):
    """The environment kubelet gives container c: envFrom, then env with $(VAR)
    expansion. Values from Secrets are '<secret NAME/KEY>'."""
    env = {}
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef")
        if not ref:
            continue
        if src.get("configMapRef"):
            cm = objs.get(("ConfigMap", ref.get("name")))
            if cm is None:
                if not ref.get("optional"):
                    err(f"{where}: envFrom ConfigMap '{ref.get('name')}' is not in the rendered set")
                continue
            env.update({src.get("prefix", "") + k: str(v) for k, v in (cm.get("data") or {}).items()})
    for e in c.get("env") or []:
        name = e.get("name")
        if "value" in e:
            v = str(e["value"])

            def sub(m):
                ref = m.group(1)
                if ref in env:
                    return env[ref]
                err(f"{where}: env {name}: $({ref}) is not defined before it (kubelet would leave it unexpanded)")
                return m.group(0)
            env[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, v)
        else:
            vf = e.get("valueFrom") or {}
            if "fieldRef" in vf:
                fp = vf["fieldRef"].get("fieldPath")
                env[name] = NAMESPACE if fp == "metadata.namespace" else f"<{fp}>"
            elif "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                env[name] = f"<secret {r.get('name')}/{r.get('key')}>"
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                cm = objs.get(("ConfigMap", r.get("name")))
                if cm is None or r.get("key") not in (cm.get("data") or {}):
                    err(f"{where}: env {name}: ConfigMap {r.get('name')} has no key {r.get('key')}")
                else:
                    env[name] = str(cm["data"][r["key"]])
            elif "resourceFieldRef" in vf:
                r = vf["resourceFieldRef"]
                res, div = r.get("resource", ""), k8s_quantity(r.get("divisor", "1"), "divisor")
                kind, what = res.split(".", 1) if "." in res else ("", res)
                q = ((c.get("resources") or {}).get(kind) or {}).get(what)
                if q is None:
                    err(f"{where}: env {name}: container has no {res}")
                else:
                    env[name] = str(math.ceil(k8s_quantity(q, res) / div))
    return env


def service_target(addr, objs, where, what):
    """(Service, port) for a worker's host:port target naming a Service by
    its DNS name in NAMESPACE, or (None, None) after an error."""
    scheme = ""
    if addr.startswith("dns:///"):
        scheme, addr = "dns:///", addr[len("dns:///"):]
    try:
        host, port = split_hostport(addr, what)
    except ValueError as e:
        err(f"{where}: {e}")
        return None, None, scheme
    labels = host.split(".")
    svc_name = labels[0]
    if len(labels) > 1 and (len(labels) < 3 or labels[1] != NAMESPACE or labels[2] != "svc"):
        err(f"{where}: {what} '{host}' is not <service>.<pod namespace>.svc[.<cluster domain>]")
    svc = objs.get(("Service", svc_name))
    if svc is None:
        err(f"{where}: {what} '{host}' names Service '{svc_name}', which is not in the rendered set")
        return None, None, scheme
    sp = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
    if not sp:
        err(f"{where}: {what} port {port} is not a port of Service {svc_name}")
        return svc, None, scheme
    return svc, sp[0], scheme


def resolve_target_port(sp, ctr):
    tp = sp.get("targetPort", sp.get("port"))
    if isinstance(tp, str):
        named = {p.get("name"): p.get("containerPort") for p in ctr.get("ports") or []}
        return named.get(tp)
    return tp


def check_resources(c, where):
    res = c.get("resources") or {}
    for r in ("cpu", "memory", "ephemeral-storage"):
        req = (res.get("requests") or {}).get(r)
        lim = (res.get("limits") or {}).get(r)
        if req is not None and lim is not None and k8s_quantity(req, r) > k8s_quantity(lim, r):
            err(f"{where}: container {c.get('name')}: requests.{r} {req} > limits.{r} {lim}")
    if (res.get("limits") or {}).get("memory") is None:
        err(f"{where}: container {c.get('name')} has no memory limit")


def check_variant(variant, path):
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        err(f"{variant}: rendered output does not parse: {e}")
        return
    objs = {}
    for d in docs:
        key = (d.get("kind"), (d.get("metadata") or {}).get("name"))
        if key in objs:
            err(f"{variant}: two objects {key[0]}/{key[1]}")
        objs[key] = d
    W = lambda kind, name: f"{variant}: {kind}/{name}"
    is_root = "+" not in variant
    vnotes = []

    sts = objs.get(("StatefulSet", "kvcached"))
    dep = objs.get(("Deployment", "kvc-worker"))
    if sts is None:
        err(f"{variant}: no StatefulSet 'kvcached'")
        return
    if dep is None:
        err(f"{variant}: no Deployment 'kvc-worker'")
    where = W("StatefulSet", "kvcached")
    spec = sts.get("spec") or {}
    pod = pod_template(sts).get("spec") or {}
    pod_labels = (pod_template(sts).get("metadata") or {}).get("labels") or {}
    ctrs = [c for c in containers(sts) if c.get("name") == "kvcached"]
    if not ctrs:
        err(f"{where}: no container named 'kvcached'")
        return
    c = ctrs[0]
    args = [str(a) for a in (c.get("args") or []) + (c.get("command") or [])]
    mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    replicas = spec.get("replicas", 1)

    # --- the config, through the volume --config points into
    conf = arg_value(args, "config")
    cfg = None
    if not conf:
        err(f"{where}: container args have no --config=")
    else:
        cdir, ckey = os.path.split(conf)
        vol = volumes.get(mounts.get(cdir))
        cm_name = ((vol or {}).get("configMap") or {}).get("name")
        cm = objs.get(("ConfigMap", cm_name)) if cm_name else None
        if cm is None:
            err(f"{where}: --config={conf} is not a file of a ConfigMap volume mounted at {cdir}")
        elif ckey not in (cm.get("data") or {}):
            err(f"{variant}: ConfigMap/{cm_name} has no key '{ckey}' (--config={conf})")
        else:
            src = f"{variant}: ConfigMap/{cm_name} {ckey}"
            try:
                cfg = yaml.safe_load(cm["data"][ckey])
            except yaml.YAMLError as e:
                err(f"{src}: does not parse: {e}")
            flatten_config(cfg, src)
            if not isinstance(cfg, dict):
                cfg = None
            else:
                check_config_values(cfg, src)
                write_checkable(cfg, variant)
    if cfg is None:
        return
    # Flags override the YAML (components/tls adds --tls_*_file).
    eff = dict(cfg)
    for k in list(KNOWN):
        v = arg_value(args, k)
        if v is not None:
            eff[k] = v
    tls = bool(eff.get("tls_cert_file"))

    try:
        # --- shutdown
        grace = absl_duration(eff.get("shutdown_grace", "10s"), "shutdown_grace")
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        pre = 0.0
        ps = ((c.get("lifecycle") or {}).get("preStop") or {})
        cmd = (ps.get("exec") or {}).get("command") or []
        if len(cmd) >= 2 and os.path.basename(str(cmd[0])) == "sleep":
            pre = float(cmd[1])
        if "seconds" in (ps.get("sleep") or {}):
            pre = float(ps["sleep"]["seconds"])
        if not tgps > grace + pre:
            err(f"{where}: terminationGracePeriodSeconds ({tgps}s) must exceed shutdown_grace "
                f"({grace:g}s) + preStop sleep ({pre:g}s), with room for the host-tier flush")
        else:
            vnotes.append(f"shutdown: terminationGracePeriodSeconds {tgps}s > shutdown_grace {grace:g}s "
                          f"+ preStop {pre:g}s (flush budget {tgps - grace - pre:g}s)")

        # --- memory
        host = kvc_bytes(eff.get("host_capacity_bytes", "1GiB"), "host_capacity_bytes")
        bc = kvc_bytes(eff.get("disk_block_cache_bytes", "64MiB"), "disk_block_cache_bytes")
        check_resources(c, where)
        res = c.get("resources") or {}
        lim = (res.get("limits") or {}).get("memory")
        req = (res.get("requests") or {}).get("memory")
        if lim is not None:
            limit = k8s_quantity(lim, "resources.limits.memory")
            headroom = max(1 << 30, host // 4)
            if not limit > host + bc:
                err(f"{where}: memory limit {lim} ({gib(limit)}) must exceed host_capacity_bytes "
                    f"({gib(host)}) + disk_block_cache_bytes ({gib(bc)})")
            elif limit < host + bc + headroom:
                err(f"{where}: memory limit {lim} ({gib(limit)}) leaves only {gib(limit - host - bc)} "
                    f"above host tier + block cache; need >= {gib(headroom)} "
                    f"(max(1 GiB, 25% of host_capacity_bytes)) for RocksDB memtables, gRPC buffers "
                    f"and fragmentation")
            else:
                vnotes.append(f"memory: limit {gib(limit)} = host {gib(host)} + block cache {gib(bc)} "
                              f"+ headroom {gib(limit - host - bc)}")
            if req is not None and k8s_quantity(req, "requests.memory") != limit:
                vnotes.append(f"memory: request {req} != limit {lim} (pod is not memory-guaranteed)")

        # --- disk
        disk = kvc_bytes(eff.get("disk_capacity_bytes", "16GiB"), "disk_capacity_bytes")
        dd = eff.get("data_dir")
        vct = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates") or []}
        data_vol = mounts.get(dd)
        if data_vol is None or data_vol not in vct:
            err(f"{where}: data_dir '{dd}' is not the mountPath of a volumeClaimTemplate")
        else:
            size = k8s_quantity(vct[data_vol]["spec"]["resources"]["requests"]["storage"], "storage")
            if size < disk * 1.25:
                err(f"{where}: PVC '{data_vol}' ({gib(size)}) must be >= 1.25 x disk_capacity_bytes "
                    f"({gib(disk)}) for RocksDB space amplification")
            else:
                vnotes.append(f"disk: PVC {gib(size)} for disk_capacity_bytes {gib(disk)}")

        # --- files named by the config live in mounted volumes
        for key in ("auth_tokens_file", "tls_cert_file", "tls_key_file"):
            fpath = eff.get(key)
            if not fpath:
                if key == "auth_tokens_file":
                    vnotes.append("auth: auth_tokens_file is empty — authentication DISABLED")
                continue
            d_, fkey = os.path.split(fpath)
            vol = volumes.get(mounts.get(d_))
            sec = (vol or {}).get("secret")
            if not sec:
                err(f"{where}: {key} {fpath} is not inside a mounted Secret volume")
            elif key == "auth_tokens_file":
                sname = sec.get("secretName")
                if sname not in example_secrets:
                    err(f"{where}: Secret '{sname}' ({key}) has no example in deploy/k8s/base/secrets.example.yaml")
                elif fkey not in example_secrets[sname]:
                    err(f"deploy/k8s/base/secrets.example.yaml: Secret {sname} has no key '{fkey}' ({key})")

        # --- ports agree: config, container, probes, Services, NetworkPolicy
        _, gport = split_hostport(eff.get("listen_address", "127.0.0.1:50051"), "listen_address")
        if not binds_all(eff.get("listen_address", "")):
            err(f"{where}: listen_address must bind all interfaces in a pod (0.0.0.0:PORT)")
        mport = None
        if eff.get("metrics_address"):
            _, mport = split_hostport(eff["metrics_address"], "metrics_address")
            if not binds_all(eff["metrics_address"]):
                err(f"{where}: metrics_address must bind all interfaces in a pod (0.0.0.0:PORT)")
        uport = None
        if eff.get("ucx_listen_address"):
            _, uport = split_hostport(eff["ucx_listen_address"], "ucx_listen_address")
            if not binds_all(eff["ucx_listen_address"]):
                err(f"{where}: ucx_listen_address must bind all interfaces in a pod (0.0.0.0:PORT)")
            if "tcp" not in str(eff.get("ucx_tls", "tcp")).split(",") and eff.get("ucx_tls"):
                err(f"{where}: ucx_tls '{eff.get('ucx_tls')}' has no tcp: pods reach each other over the network")
        cports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        want = {"grpc": gport, "metrics": mport, "ucx": uport}
        for name, port in want.items():
            if port is None:
                if name in cports:
                    err(f"{where}: containerPort '{name}' is declared but kvcached does not listen for it")
            elif cports.get(name) != port:
                err(f"{where}: containerPort '{name}' {cports.get(name)} != the config's port {port}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c.get(probe)
            if not pr:
                err(f"{where}: missing {probe}")
                continue
            if tls:
                if (pr.get("tcpSocket") or {}).get("port") not in (gport, "grpc"):
                    err(f"{where}: with TLS, {probe} must be a tcpSocket probe on port {gport} "
                        f"(native gRPC probes cannot speak TLS)")
            elif (pr.get("grpc") or {}).get("port") != gport:
                err(f"{where}: {probe} must be a grpc probe (grpc.health.v1.Health) on port {gport}")
        ann = (pod_template(sts).get("metadata") or {}).get("annotations") or {}
        if mport is not None and ann.get("prometheus.io/scrape") == "true" and \
                str(ann.get("prometheus.io/port")) != str(mport):
            err(f"{where}: prometheus.io/port annotation {ann.get('prometheus.io/port')} != metrics port {mport}")

        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        ucx_range = None
        if uport is not None:
            r = env.get("UCX_TCP_PORT_RANGE")
            m = re.fullmatch(r"(\d+)-(\d+)", str(r or ""))
            if not m:
                err(f"{where}: with ucx_listen_address set, env UCX_TCP_PORT_RANGE must name a port range "
                    f"(LO-HI): the UCX tcp transport's connections otherwise use ephemeral ports no "
                    f"NetworkPolicy can admit")
            else:
                ucx_range = (int(m.group(1)), int(m.group(2)))
                if uport is not None and ucx_range[0] <= uport <= ucx_range[1] or \
                        ucx_range[0] <= gport <= ucx_range[1]:
                    err(f"{where}: UCX_TCP_PORT_RANGE {r} overlaps the gRPC or UCX listener port")

        # --- security
        sc = c.get("securityContext") or {}
        psc = pod.get("securityContext") or {}
        if not sc.get("readOnlyRootFilesystem"):
            err(f"{where}: readOnlyRootFilesystem must be true")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            err(f"{where}: runAsNonRoot must be true")

        # --- selectors and Services
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        if not labels_match(sel, pod_labels):
            err(f"{where}: selector does not match the pod template labels")
        svc_name = spec.get("serviceName")
        head = objs.get(("Service", svc_name))
        if head is None or (head.get("spec") or {}).get("clusterIP") != "None":
            err(f"{where}: serviceName '{svc_name}' must be a headless Service (clusterIP: None) in the set")
        for (kind, name), s in objs.items():
            if kind != "Service":
                continue
            ssel = (s.get("spec") or {}).get("selector") or {}
            if not labels_match(ssel, pod_labels):
                continue
            for sp in (s.get("spec") or {}).get("ports") or []:
                tp = resolve_target_port(sp, c)
                if tp is None:
                    err(f"{W('Service', name)}: targetPort '{sp.get('targetPort')}' is not a kvcached container port")
                elif sp.get("port") != tp:
                    err(f"{W('Service', name)}: port {sp.get('port')} != targetPort {tp}: clients compose "
                        f"addresses from kvcached's ports, keep them equal")
        pdbs = [d for (k, _), d in objs.items() if k == "PodDisruptionBudget"
                and labels_match(((d.get("spec") or {}).get("selector") or {}).get("matchLabels"), pod_labels)]
        if not pdbs:
            err(f"{where}: no PodDisruptionBudget selects the kvcached pods")
        for d in pdbs:
            mu = (d.get("spec") or {}).get("maxUnavailable")
            if (d.get("spec") or {}).get("minAvailable") is not None and replicas <= 1:
                err(f"{W('PodDisruptionBudget', d['metadata']['name'])}: minAvailable with one member "
                    f"blocks every node drain; use maxUnavailable: 1")
            elif mu is not None and isinstance(mu, int) and replicas > 1 and mu >= replicas:
                err(f"{W('PodDisruptionBudget', d['metadata']['name'])}: maxUnavailable {mu} lets every member go at once")

        # --- placement of a multi-member set
        if replicas > 1:
            aff = ((pod.get("affinity") or {}).get("podAntiAffinity") or {})
            req_terms = aff.get("requiredDuringSchedulingIgnoredDuringExecution") or []
            pref_terms = [t.get("podAffinityTerm") or {} for t in
                          aff.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
            spread = pod.get("topologySpreadConstraints") or []

            def selects_me(term):
                return labels_match(((term.get("labelSelector") or {}).get("matchLabels")), pod_labels)
            by_host = [t for t in req_terms + pref_terms if t.get("topologyKey") == "kubernetes.io/hostname"
                       and selects_me(t)]
            by_host += [t for t in spread if t.get("topologyKey") == "kubernetes.io/hostname" and selects_me(t)]
            if not by_host:
                err(f"{where}: {replicas} members but no pod anti-affinity or topology spread over "
                    f"kubernetes.io/hostname: one node could hold several members")
            else:
                vnotes.append(f"placement: {replicas} members spread over nodes")

        # --- NetworkPolicies that select kvcached admit the workers
        worker_labels = (pod_template(dep).get("metadata") or {}).get("labels") or {} if dep else {}
        for (kind, name), np_ in objs.items():
            if kind != "NetworkPolicy":
                continue
            if not labels_match(((np_.get("spec") or {}).get("podSelector") or {}).get("matchLabels"), pod_labels):
                continue
            admitted = []  # (lo, hi) admitted from worker pods
            for rule in (np_.get("spec") or {}).get("ingress") or []:
                froms = rule.get("from") or []
                if froms and not any(labels_match(((f.get("podSelector") or {}).get("matchLabels")), worker_labels)
                                     and "namespaceSelector" not in f for f in froms):
                    continue
                for p in rule.get("ports") or [{"port": None}]:
                    port = p.get("port")
                    if port is None:
                        admitted.append((0, 65535))
                    elif isinstance(port, str):
                        n = cports.get(port)
                        if n:
                            admitted.append((n, n))
                    else:
                        admitted.append((port, p.get("endPort", port)))

            def ok(lo, hi):
                return any(a <= lo and hi <= b for a, b in admitted)
            need = [("gRPC", gport, gport)]
            if uport is not None:
                need.append(("UCX listener", uport, uport))
            if ucx_range:
                need.append(("UCX_TCP_PORT_RANGE", *ucx_range))
            for what, lo, hi in need:
                if not ok(lo, hi):
                    err(f"{W('NetworkPolicy', name)}: does not admit the {what} port(s) {lo}"
                        f"{'-' + str(hi) if hi != lo else ''} from the worker pods")
    except (ValueError, KeyError, TypeError) as e:
        err(f"{where}: {type(e).__name__}: {e}")

    # ---------------------------------------------------------- workers
    if dep is not None:
        check_worker(variant, objs, dep, c, cfg, eff, replicas, vnotes, is_root)

    # ---------------------------------------------------------- monitoring CRs
    for (kind, name), d in objs.items():
        if kind not in ("ServiceMonitor", "PodMonitor"):
            continue
        sel = (((d.get("spec") or {}).get("selector") or {}).get("matchLabels")) or {}
        eps = (d.get("spec") or {}).get("endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints") or []
        if kind == "ServiceMonitor":
            targets = [s for (k, _), s in objs.items() if k == "Service"
                       and labels_match(sel, (s.get("metadata") or {}).get("labels") or {})]
            names = {p.get("name") for s in targets for p in (s.get("spec") or {}).get("ports") or []}
        else:
            targets = [w for (k, _), w in objs.items() if k in ("Deployment", "StatefulSet")
                       and labels_match(sel, (pod_template(w).get("metadata") or {}).get("labels") or {})]
            names = {p.get("name") for w in targets for ct in containers(w) for p in ct.get("ports") or []}
        if not targets:
            err(f"{W(kind, name)}: selector {sel} matches nothing in the set")
        for ep in eps:
            if ep.get("port") not in names:
                err(f"{W(kind, name)}: port '{ep.get('port')}' is not a port name of what it selects")

    if is_root:
        for n in vnotes:
            notes.append(f"{variant}: {n}")


def check_worker(variant, objs, dep, kc, cfg, eff, replicas, vnotes, is_root):
    where = f"{variant}: Deployment/kvc-worker"
    pod = pod_template(dep).get("spec") or {}
    labels = (pod_template(dep).get("metadata") or {}).get("labels") or {}
    ctrs = [c for c in containers(dep) if c.get("name") == "kvc-worker"]
    if not ctrs:
        err(f"{where}: no container named 'kvc-worker'")
        return
    c = ctrs[0]
    sel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels_match(sel, labels):
        err(f"{where}: selector does not match the pod template labels")
    if labels.get("app.kubernetes.io/component") != "worker":
        err(f"{where}: pods must carry app.kubernetes.io/component: worker (kvcached's NetworkPolicy admits that label)")
    try:
        check_resources(c, where)
        env = expand_env(c, pod, objs, where)
        flags = {k[len("FLAGS_"):]: v for k, v in env.items() if k.startswith("FLAGS_")}
        for f in sorted(flags):
            if WORKER_FLAGS and f not in WORKER_FLAGS:
                err(f"{where}: FLAGS_{f} is not a kvc-worker flag (kvc-worker would refuse to run)")
        # args follow the FLAGS_* ones on serve's command line
        # (kvc-worker-serve "$@"), so they win; kubelet expands $(VAR) in them.
        for a in c.get("args") or []:
            a = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), str(a))
            m = re.fullmatch(r"--([a-z_0-9]+)(?:=(.*))?", a, re.S)
            if not m:
                err(f"{where}: arg '{a}' is not a --flag or --flag=value")
                continue
            name, value = m.group(1), m.group(2)
            if value is None and name not in WORKER_FLAGS and name.startswith("no") and name[2:] in WORKER_FLAGS:
                name, value = name[2:], "false"
            if WORKER_FLAGS and name not in WORKER_FLAGS:
                err(f"{where}: arg {a} is not a kvc-worker flag")
            flags[name] = "true" if value is None else value
        if c.get("command"):
            err(f"{where}: container 'command' replaces the image's entrypoint (kvc-worker-serve, which execs "
                f"`kvc-worker serve` with the FLAGS_* variables); pass flags as FLAGS_* or args instead")
        for f in WORKER_REQUEST_FLAGS:
            if f in flags:
                err(f"{where}: FLAGS_{f} is not a setting of `kvc-worker serve` (a request carries it, or it is "
                    f"`ask`'s); drop it")
        if flags.get("context_peers"):
            err(f"{where}: FLAGS_context_peers is for `kvc-worker generate` only; serve refuses to start with it")

        # --- the cache service, by Service DNS name
        gport = split_hostport(eff.get("listen_address", "127.0.0.1:50051"), "listen_address")[1]
        uport = split_hostport(eff["ucx_listen_address"], "ucx")[1] if eff.get("ucx_listen_address") else None
        target = flags.get("cache_service", "")
        transport = flags.get("transport", "auto")
        if not target:
            err(f"{where}: FLAGS_cache_service is not set: the worker would not use the cache service")
        else:
            svc, sp, scheme = service_target(target, objs, where, "FLAGS_cache_service")
            if sp is not None and resolve_target_port(sp, kc) != gport:
                err(f"{where}: FLAGS_cache_service port {sp.get('port')} of Service "
                    f"{svc['metadata']['name']} does not lead to kvcached's gRPC port {gport}")
            headless = svc is not None and (svc.get("spec") or {}).get("clusterIP") == "None"
            if replicas > 1 and not headless:
                err(f"{where}: {replicas} kvcached members but FLAGS_cache_service '{target}' is not the "
                    f"headless Service: the worker would see one member per connection, not the member set")
            if headless and scheme != "dns:///":
                err(f"{where}: FLAGS_cache_service names the headless Service without 'dns:///': "
                    f"use dns:///<headless>... so gRPC resolves every member")
            if svc is not None:
                vnotes.append(f"worker: cache service {target}")
        ucx = flags.get("cache_ucx", "")
        ucx_port = flags.get("cache_ucx_port", "0")
        if ucx and (target.startswith("dns:///") or "," in target):
            err(f"{where}: FLAGS_cache_ucx is one member's UCX address, but FLAGS_cache_service '{target}' names "
                f"a member set (kvc-worker refuses the pair); use FLAGS_cache_ucx_port")
        if transport != "grpc" and ucx_port not in ("", "0"):
            # The cluster client: UCX to each member's own address at this port.
            if uport is None:
                err(f"{where}: FLAGS_cache_ucx_port={ucx_port} but kvcached has no ucx_listen_address")
            elif ucx_port != str(uport):
                err(f"{where}: FLAGS_cache_ucx_port={ucx_port} != kvcached's UCX port {uport}")
            elif ucx:
                err(f"{where}: set FLAGS_cache_ucx_port or FLAGS_cache_ucx, not both")
            else:
                vnotes.append(f"worker: UCX to every member at port {uport}")
        elif transport != "grpc":
            if uport is None:
                if transport == "ucx":
                    err(f"{where}: FLAGS_transport=ucx but kvcached has no ucx_listen_address")
            elif not ucx:
                vnotes.append("worker: no FLAGS_cache_ucx: bulk KV over gRPC")
            else:
                svc, sp, _ = service_target(ucx, objs, where, "FLAGS_cache_ucx")
                if sp is not None and resolve_target_port(sp, kc) != uport:
                    err(f"{where}: FLAGS_cache_ucx port {sp.get('port')} of Service {svc['metadata']['name']} "
                        f"does not lead to kvcached's UCX port {uport}")
                if replicas > 1:
                    err(f"{where}: FLAGS_transport={transport} with {replicas} members and FLAGS_cache_ucx: "
                        f"a UCX connection through a Service reaches one member, not the one that owns a "
                        f"block; use FLAGS_cache_ucx_port (UCX to each member) or FLAGS_transport=grpc")
                if "tcp" not in flags.get("ucx_tls", "tcp").split(","):
                    err(f"{where}: FLAGS_ucx_tls '{flags.get('ucx_tls')}' has no tcp (pods talk over the network)")
        # --- TLS: a worker of a TLS kvcached must verify its certificate.
        tls = bool(eff.get("tls_cert_file"))
        ca = flags.get("cache_tls_ca_file", "")
        if tls and not ca:
            err(f"{where}: kvcached speaks TLS but FLAGS_cache_tls_ca_file is not set: every worker run would be "
                f"degraded (its gRPC handshakes fail)")
        elif not tls and ca:
            err(f"{where}: FLAGS_cache_tls_ca_file is set but kvcached does not speak TLS")
        elif ca:
            ca_mounts = [m.get("mountPath", "").rstrip("/") + "/" for m in c.get("volumeMounts") or []]
            if not any(ca.startswith(m) for m in ca_mounts):
                err(f"{where}: FLAGS_cache_tls_ca_file {ca} is not on a mounted volume")
            else:
                vnotes.append(f"worker: TLS to the cache service, roots from {ca}")
        if flags.get("transport") not in (None, "auto", "ucx", "grpc"):
            err(f"{where}: FLAGS_transport '{flags.get('transport')}' is not auto|ucx|grpc")
        if not str(flags.get("cache_token", "")).startswith("<secret "):
            err(f"{where}: FLAGS_cache_token must come from a Secret (secretKeyRef), not a plain value")
        else:
            m = re.match(r"<secret (\S+)/(\S+)>", flags["cache_token"])
            if m and m.group(1) in example_secrets and m.group(2) not in example_secrets[m.group(1)]:
                err(f"deploy/k8s/base/secrets.example.yaml: Secret {m.group(1)} has no key '{m.group(2)}'")
            elif m and m.group(1) not in example_secrets:
                err(f"{where}: Secret '{m.group(1)}' (FLAGS_cache_token) has no example in "
                    f"deploy/k8s/base/secrets.example.yaml")
        tenant = flags.get("cache_tenant", "default")
        if cfg.get("auth_tokens_file") and example_tenants and tenant not in example_tenants:
            err(f"{where}: FLAGS_cache_tenant '{tenant}' is not a tenant of the example tokens file "
                f"(secrets.example.yaml): the worker's token must belong to its tenant")

        # --- the model: baked into the image or on a mounted volume
        mounts = [m.get("mountPath") for m in c.get("volumeMounts") or []]
        model_bytes = 0
        for key in ("model", "tokenizer"):
            p = flags.get(key)
            if not p:
                err(f"{where}: FLAGS_{key} is not set (the default is a path relative to the repository)")
                continue
            baked = any(p.startswith(d.rstrip("/") + "/") for d in BAKED_DIRS)
            mounted = any(p.startswith(m.rstrip("/") + "/") for m in mounts)
            if not baked and not mounted:
                err(f"{where}: FLAGS_{key} {p} is neither baked into the image ({', '.join(BAKED_DIRS) or 'none'}) "
                    f"nor under a volumeMount")
            if baked:
                model_bytes += MODEL_BYTES.get(os.path.basename(p), 0)
        # Weights as loaded + write-through queue (64 MiB) + UCX pools (2 x 64 MiB) + 256 MiB runtime.
        lim = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        if lim is not None and model_bytes:
            need = model_bytes + (448 << 20)
            if k8s_quantity(lim, "limits.memory") < need:
                err(f"{where}: memory limit {lim} is below model ({model_bytes / 2**20:.0f} MiB) + "
                    f"write-through queue 64 MiB + UCX pools 128 MiB + 256 MiB runtime = {need / 2**20:.0f} MiB")
        if flags.get("threads") and not flags["threads"].isdigit():
            err(f"{where}: FLAGS_threads '{flags['threads']}' is not a number")

        # --- the Worker gRPC service: port, probes, Service, PDB
        cports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        la = flags.get("listen_address", WORKER_DEFAULTS.get("listen_address", ""))
        _, lport = split_hostport(la, "FLAGS_listen_address")
        if not binds_all(la):
            err(f"{where}: FLAGS_listen_address '{la}' must bind all interfaces in a pod (0.0.0.0:PORT)")
        if cports.get("grpc") != lport:
            err(f"{where}: containerPort 'grpc' {cports.get('grpc')} != FLAGS_listen_address port {lport}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c.get(probe)
            if not pr:
                err(f"{where}: missing {probe}")
                continue
            g = pr.get("grpc") or {}
            if g.get("port") != lport or any(h in pr for h in ("exec", "httpGet", "tcpSocket")):
                err(f"{where}: {probe} must be a grpc probe (grpc.health.v1 of kvc-worker serve) on the grpc "
                    f"port {lport}")
            elif g.get("service"):
                err(f"{where}: {probe} asks the health of service '{g['service']}'; kvc-worker answers for the "
                    f"server as a whole (leave 'service' out)")
        svcs = [(n, s) for (k, n), s in objs.items() if k == "Service"
                and labels_match((s.get("spec") or {}).get("selector") or {}, labels)]
        to_grpc = []
        for n, s in svcs:
            for sp in (s.get("spec") or {}).get("ports") or []:
                tp = resolve_target_port(sp, c)
                if tp is None:
                    err(f"{variant}: Service/{n}: targetPort '{sp.get('targetPort')}' is not a kvc-worker "
                        f"container port")
                elif tp == lport:
                    to_grpc.append(f"{n}:{sp.get('port')}")
        if not svcs:
            err(f"{where}: no Service selects the worker pods: clients have no address to send requests to")
        elif not to_grpc:
            err(f"{where}: no port of the Service(s) {', '.join(n for n, _ in svcs)} leads to the grpc port {lport}")
        else:
            vnotes.append(f"worker: serves kvcache.v1.Worker on port {lport}, Service {', '.join(to_grpc)}")
        wreplicas = (dep.get("spec") or {}).get("replicas", 1)
        pdbs = [d for (k, _), d in objs.items() if k == "PodDisruptionBudget"
                and labels_match(((d.get("spec") or {}).get("selector") or {}).get("matchLabels"), labels)]
        if not pdbs:
            err(f"{where}: no PodDisruptionBudget selects the worker pods")
        for d in pdbs:
            ds = d.get("spec") or {}
            mu = ds.get("maxUnavailable")
            if ds.get("minAvailable") is not None and wreplicas <= 1:
                err(f"{variant}: PodDisruptionBudget/{d['metadata']['name']}: minAvailable with one worker "
                    f"blocks every node drain; use maxUnavailable: 1")
            elif isinstance(mu, int) and wreplicas > 1 and mu >= wreplicas:
                err(f"{variant}: PodDisruptionBudget/{d['metadata']['name']}: maxUnavailable {mu} lets every "
                    f"worker go at once")

        # --- shutdown: preStop, then SIGTERM: drain (shutdown_grace), flush the write-through
        sg = absl_duration(flags.get("shutdown_grace", WORKER_DEFAULTS.get("shutdown_grace", "30s")),
                           "FLAGS_shutdown_grace")
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        pre = 0.0
        ps = ((c.get("lifecycle") or {}).get("preStop") or {})
        cmd = (ps.get("exec") or {}).get("command") or []
        if len(cmd) >= 2 and os.path.basename(str(cmd[0])) == "sleep":
            pre = float(cmd[1])
        if "seconds" in (ps.get("sleep") or {}):
            pre = float(ps["sleep"]["seconds"])
        flush = WORKER_FLUSH_SECONDS if flags.get("cache_service") else 0
        if not tgps > sg + pre + flush:
            err(f"{where}: terminationGracePeriodSeconds ({tgps}s) must exceed FLAGS_shutdown_grace ({sg:g}s) + "
                f"preStop sleep ({pre:g}s) + the write-through flush (up to {flush}s)")
        else:
            vnotes.append(f"worker shutdown: terminationGracePeriodSeconds {tgps}s > preStop {pre:g}s + "
                          f"shutdown_grace {sg:g}s + flush {flush}s")

        # --- metrics
        ma = flags.get("metrics_address")
        if ma:
            _, mport = split_hostport(ma, "FLAGS_metrics_address")
            if not binds_all(ma):
                err(f"{where}: FLAGS_metrics_address must bind all interfaces (0.0.0.0:PORT)")
            if mport == lport:
                err(f"{where}: FLAGS_metrics_address port {mport} is the gRPC port")
            if cports.get("metrics") != mport:
                err(f"{where}: containerPort 'metrics' {cports.get('metrics')} != FLAGS_metrics_address port {mport}")
            ann = (pod_template(dep).get("metadata") or {}).get("annotations") or {}
            if ann.get("prometheus.io/scrape") == "true" and str(ann.get("prometheus.io/port")) != str(mport):
                err(f"{where}: prometheus.io/port annotation != FLAGS_metrics_address port {mport}")
        elif "metrics" in cports:
            err(f"{where}: containerPort 'metrics' is declared but FLAGS_metrics_address is not set")

        sc = c.get("securityContext") or {}
        if not sc.get("readOnlyRootFilesystem"):
            err(f"{where}: readOnlyRootFilesystem must be true")
        if not (sc.get("runAsNonRoot") or (pod.get("securityContext") or {}).get("runAsNonRoot")):
            err(f"{where}: runAsNonRoot must be true")

        # The environment for the local smoke run of the image's entrypoint
        # (FLAGS_* with the args folded in), for every root and every root with
        # components/tls (TLS end to end).
        tls_smoke = variant.endswith("+tls") and "+" not in variant[: -len("+tls")]
        if (is_root or tls_smoke) and WORKER_ENTRYPOINT:
            smoke = os.path.join(out, "smoke", variant)
            os.makedirs(smoke, exist_ok=True)
            with open(os.path.join(smoke, "worker-env.json"), "w") as f:
                json.dump({"FLAGS_" + k: v for k, v in flags.items()}, f, indent=1)
            with open(os.path.join(smoke, "entrypoint"), "w") as f:
                f.write(WORKER_ENTRYPOINT + "\n")
            local = dict(cfg)
            local.update({"listen_address": "127.0.0.1:0", "port_file": os.path.join(smoke, "grpc.port"),
                          "metrics_address": "", "data_dir": os.path.join(smoke, "data"),
                          "auth_tokens_file": os.path.join(smoke, "tokens")})
            if local.get("ucx_listen_address"):
                local.update({"ucx_listen_address": "127.0.0.1:0", "ucx_port_file": os.path.join(smoke, "ucx.port"),
                              "ucx_net_devices": ""})
            if tls_smoke:
                # check.sh makes a certificate for 127.0.0.1 here (openssl).
                local.update({"tls_cert_file": os.path.join(smoke, "tls.crt"),
                              "tls_key_file": os.path.join(smoke, "tls.key")})
                with open(os.path.join(smoke, "tls"), "w") as f:
                    f.write("1\n")
            with open(os.path.join(smoke, "kvcached.yaml"), "w") as f:
                yaml.safe_dump(local, f, sort_keys=False)
            with open(os.path.join(smoke, "tenant"), "w") as f:
                f.write(tenant + "\n")
    except (ValueError, KeyError, TypeError) as e:
        err(f"{where}: {type(e).__name__}: {e}")


for v in variants:
    check_variant(v, os.path.join(rendered_dir, v + ".yaml"))

for n in notes:
    print(f"check.sh: ok: {n}")
if errors:
    for e in errors:
        print(f"check.sh: FAIL: {e}", file=sys.stderr)
    sys.exit(1)
print(f"check.sh: {len(files)} YAML files, {len(variants)} rendered variants: static checks passed")
