// Offline validation of the deployment against the Kubernetes schemas.
//
//   node deploy/validate/validate.mjs [--rendered DIR]
//
// 1. Renders every variant of deploy/k8s (deploy/render.sh: base and each
//    overlay, alone and with the components; `kubectl kustomize`), or reads
//    DIR/<variant>.yaml from an earlier render.
// 2. Validates every object of every variant with the model class of its
//    apiVersion/kind: kubernetes-models (the Kubernetes OpenAPI schemas) and
//    @kubernetes-models/prometheus-operator (the ServiceMonitor/PodMonitor
//    CRD schemas). An object whose kind has no model is an error, never a
//    silent skip: add the package that models it.
// 3. Rejects unknown fields, as the API server's strict field validation
//    does (`kubectl apply` >= 1.27): a field the schema validator never read
//    is not in the schema.
// 4. Checks a few API-server rules the schemas do not carry: object, label,
//    port and container names; selectors that match their pod templates;
//    volume mounts that name a volume.
// 5. Lints deploy/docker/*.Dockerfile (dockerfile-utils) and checks that every
//    COPY source exists and is not excluded by the Dockerfile's .dockerignore.
// 6. Self-test: a few broken copies of a real object must each be rejected,
//    so a validator that stopped validating cannot pass.
//
// Prints one line per problem, naming the variant, the object and the field;
// exits 1 if there is one, 77 if kubectl is missing (nothing rendered).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { parseAllDocuments } from "yaml";
import dockerfileUtils from "dockerfile-utils";

const here = path.dirname(fileURLToPath(import.meta.url));
const deploy = path.dirname(here);
const repo = path.dirname(deploy);

const problems = [];
const fail = (msg) => problems.push(msg);

// ------------------------------------------------------------ models
// apiVersion -> the packages that may model it, first match wins.
const MODEL_PACKAGES = ["kubernetes-models", "@kubernetes-models/prometheus-operator"];
const moduleCache = new Map();

async function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string") return null;
  for (const pkg of MODEL_PACKAGES) {
    const spec = `${pkg}/${apiVersion}`;
    if (!moduleCache.has(spec)) {
      moduleCache.set(spec, await import(spec).catch(() => null));
    }
    const mod = moduleCache.get(spec);
    if (mod && typeof mod[kind] === "function") return { cls: mod[kind], pkg };
  }
  return null;
}

// Runs the model's schema validator over a proxy of `data` that records
// which properties the validator reads, then reports the properties it never
// read. Every object schema reads all of its declared properties (present or
// not) and maps (labels, data, resources.limits) read every key, so an
// unread key is a field the schema does not have. An object of which nothing
// was read is free-form in the schema (e.g. preserve-unknown-fields) and is
// not judged.
function unknownFields(cls, data) {
  const read = new WeakMap();
  const proxies = new WeakMap();
  const wrap = (v) => {
    if (v === null || typeof v !== "object") return v;
    if (proxies.has(v)) return proxies.get(v);
    read.set(v, new Set());
    const p = new Proxy(v, {
      get(target, key, receiver) {
        if (typeof key === "string") read.get(target).add(key);
        return wrap(Reflect.get(target, key, receiver));
      },
    });
    proxies.set(v, p);
    return p;
  };
  try {
    cls.prototype.validate.call(wrap(data));
  } catch {
    // Schema errors are reported by the caller; the reads still count.
  }
  const unknown = [];
  const walk = (v, at) => {
    if (v === null || typeof v !== "object") return;
    if (Array.isArray(v)) {
      v.forEach((e, i) => walk(e, `${at}[${i}]`));
      return;
    }
    const keys = read.get(v);
    const judged = keys !== undefined && keys.size > 0;
    for (const [k, sub] of Object.entries(v)) {
      const here_ = at ? `${at}.${k}` : k;
      if (judged && !keys.has(k)) unknown.push(here_);
      else walk(sub, here_);
    }
  };
  walk(data, "");
  return unknown;
}

function describeAjvError(e) {
  const at = (e.instancePath || "").split("/").filter(Boolean)
    .map((seg, i) => (/^\d+$/.test(seg) ? `[${seg}]` : `${i ? "." : ""}${seg.replace(/~1/g, "/").replace(/~0/g, "~")}`))
    .join("") || "(object)";
  const extra = e.params && e.params.missingProperty ? ` '${e.params.missingProperty}'` : "";
  return `${at}: ${e.message}${extra}`;
}

async function validateObject(obj, where) {
  const found = await modelFor(obj.apiVersion, obj.kind);
  if (!found) {
    fail(`${where}: no schema for apiVersion '${obj.apiVersion}' kind '${obj.kind}' in ` +
         `${MODEL_PACKAGES.join(", ")}: add the @kubernetes-models package that models it ` +
         `(deploy/validate/package.json) rather than leave it unchecked`);
    return false;
  }
  const model = new found.cls(obj);
  let ok = true;
  try {
    model.validate();
  } catch (e) {
    const errs = Array.isArray(e.errors) && e.errors.length ? e.errors.map(describeAjvError) : [String(e.message || e)];
    // ajv reports each failed branch of a oneOf; the first lines are the useful ones.
    for (const m of [...new Set(errs)].slice(0, 8)) fail(`${where}: ${m}`);
    ok = false;
  }
  for (const f of unknownFields(found.cls, JSON.parse(JSON.stringify(obj)))) {
    fail(`${where}: ${f}: unknown field (not in the ${obj.apiVersion} ${obj.kind} schema of ${found.pkg})`);
    ok = false;
  }
  return ok;
}

// ------------------------------------------------------------ API-server rules
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const PORT_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/; // IANA_SVC_NAME, <= 15, one letter

function checkLabels(labels, at) {
  for (const [k, v] of Object.entries(labels || {})) {
    const [prefix, name] = k.includes("/") ? k.split("/", 2) : ["", k];
    if ((prefix && (prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) ||
        name.length > 63 || !LABEL_NAME.test(name)) {
      fail(`${at}: label key '${k}' is not a valid label name`);
    }
    if (typeof v !== "string" || v.length > 63 || !LABEL_VALUE.test(v)) {
      fail(`${at}: label '${k}' value '${v}' is not a valid label value (<= 63 alphanumerics, '-', '_', '.')`);
    }
  }
}

function checkPortName(name, at) {
  if (name === undefined) return;
  if (name.length > 15 || !PORT_NAME.test(name) || !/[a-z]/.test(name) || name.includes("--")) {
    fail(`${at}: port name '${name}' must be <= 15 lowercase alphanumerics or '-', with a letter`);
  }
}

function checkPodSpec(spec, at, claimNames = []) {
  const volumes = new Set([...(spec.volumes || []).map((v) => v.name), ...claimNames]);
  const all = [...(spec.initContainers || []), ...(spec.containers || [])];
  const names = new Set();
  for (const [i, c] of all.entries()) {
    const cat = `${at}.containers[${c.name ?? i}]`;
    if (names.has(c.name)) fail(`${cat}: duplicate container name`);
    names.add(c.name);
    if (!DNS1123_LABEL.test(c.name || "")) fail(`${cat}: container name is not a DNS-1123 label`);
    const portNames = new Set();
    for (const p of c.ports || []) {
      checkPortName(p.name, `${cat}.ports`);
      if (p.name !== undefined && portNames.has(p.name)) fail(`${cat}.ports: duplicate port name '${p.name}'`);
      portNames.add(p.name);
    }
    for (const m of c.volumeMounts || []) {
      if (!volumes.has(m.name)) fail(`${cat}.volumeMounts: '${m.name}' is not a volume of the pod`);
    }
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      if (!p) continue;
      const handlers = ["exec", "httpGet", "tcpSocket", "grpc"].filter((h) => p[h]);
      if (handlers.length !== 1) fail(`${cat}.${probe}: needs exactly one of exec, httpGet, tcpSocket, grpc`);
      if (probe !== "readinessProbe" && p.successThreshold !== undefined && p.successThreshold !== 1) {
        fail(`${cat}.${probe}.successThreshold: must be 1`);
      }
      if (typeof (p.grpc || {}).port === "string") fail(`${cat}.${probe}.grpc.port: must be a number`);
    }
  }
}

function selectorMatches(sel, labels) {
  const ml = (sel || {}).matchLabels || {};
  return Object.keys(ml).length > 0 && Object.entries(ml).every(([k, v]) => (labels || {})[k] === v);
}

function checkApiRules(obj, where) {
  const md = obj.metadata || {};
  const name = md.name || "";
  const nameRule = obj.kind === "Service" ? DNS1035_LABEL : DNS1123_SUBDOMAIN;
  if (!nameRule.test(name) || name.length > (obj.kind === "Service" ? 63 : 253)) {
    fail(`${where}: metadata.name '${name}' is not a valid ${obj.kind} name`);
  }
  checkLabels(md.labels, `${where}: metadata.labels`);
  const spec = obj.spec || {};
  if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"].includes(obj.kind)) {
    const tmpl = spec.template || {};
    checkLabels((tmpl.metadata || {}).labels, `${where}: spec.template.metadata.labels`);
    if (!selectorMatches(spec.selector, (tmpl.metadata || {}).labels)) {
      fail(`${where}: spec.selector does not match spec.template.metadata.labels (the API server refuses it)`);
    }
    const claims = (spec.volumeClaimTemplates || []).map((t) => (t.metadata || {}).name);
    checkPodSpec(tmpl.spec || {}, `${where}: spec.template.spec`, claims);
  }
  if (obj.kind === "Service") {
    const names = new Set();
    for (const p of spec.ports || []) {
      checkPortName(p.name, `${where}: spec.ports`);
      if ((spec.ports || []).length > 1 && !p.name) fail(`${where}: spec.ports: every port needs a name when there are several`);
      if (names.has(p.name)) fail(`${where}: spec.ports: duplicate name '${p.name}'`);
      names.add(p.name);
    }
  }
  if (obj.kind === "NetworkPolicy") {
    for (const [i, r] of (spec.ingress || []).entries()) {
      for (const p of r.ports || []) {
        if (p.endPort !== undefined && (typeof p.port !== "number" || p.endPort < p.port)) {
          fail(`${where}: spec.ingress[${i}].ports: endPort ${p.endPort} needs a numeric port <= it`);
        }
      }
    }
  }
}

// ------------------------------------------------------------ Dockerfiles
function dockerignoreMatcher(file) {
  if (!fs.existsSync(file)) return null;
  const rules = fs.readFileSync(file, "utf8").split("\n")
    .map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))
    .map((l) => {
      const negate = l.startsWith("!");
      const pat = (negate ? l.slice(1) : l).replace(/^\/+|\/+$/g, "");
      const re = pat.split("/").map((seg) =>
        seg === "**" ? "(?:.*/)?" : seg.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]") + "/")
        .join("").replace(/\/$/, "");
      return { negate, re: new RegExp(`^${re}(?:/.*)?$`) };
    });
  return (p) => {
    let excluded = false;
    for (const r of rules) if (r.re.test(p)) excluded = !r.negate;
    return excluded;
  };
}

function checkDockerfiles() {
  const dir = path.join(deploy, "docker");
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".Dockerfile") || f === "Dockerfile");
  if (files.length === 0) fail("deploy/docker: no Dockerfiles");
  for (const f of files) {
    const where = `deploy/docker/${f}`;
    const text = fs.readFileSync(path.join(dir, f), "utf8");
    for (const d of dockerfileUtils.validate(text)) {
      fail(`${where}:${d.range.start.line + 1}: ${d.message}`);
    }
    const ignored = dockerignoreMatcher(path.join(dir, `${f}.dockerignore`));
    if (!ignored) fail(`${where}: no ${f}.dockerignore next to it (the whole repository, build/ included, would be sent)`);
    // Logical lines (continuations joined), then COPY sources and --from stages.
    const lines = text.replace(/\\\n/g, " ").split("\n");
    const stages = new Set();
    for (const line of lines) {
      const from = line.match(/^\s*FROM\s+\S+(?:\s+AS\s+(\S+))?/i);
      if (from && from[1]) stages.add(from[1].toLowerCase());
      const copy = line.match(/^\s*(COPY|ADD)\s+(.*)$/i);
      if (!copy) continue;
      const words = copy[2].trim().split(/\s+/);
      const opts = words.filter((w) => w.startsWith("--"));
      const args = words.filter((w) => !w.startsWith("--"));
      const fromOpt = opts.find((o) => o.startsWith("--from="));
      if (fromOpt) {
        const stage = fromOpt.slice("--from=".length).toLowerCase();
        if (!stages.has(stage) && !stage.includes(":") && !stage.includes("/")) {
          fail(`${where}: ${copy[1]} ${fromOpt}: no earlier stage named '${stage}'`);
        }
        continue;
      }
      for (const src of args.slice(0, -1)) {
        const rel = src.replace(/^\.\/?/, "").replace(/\/$/, "");
        if (rel === "" || rel === ".") continue;
        if (!fs.existsSync(path.join(repo, rel))) fail(`${where}: ${copy[1]} source '${src}' does not exist in the repository`);
        else if (ignored && ignored(rel)) fail(`${where}: ${copy[1]} source '${src}' is excluded by ${f}.dockerignore`);
      }
    }
  }
  return files.length;
}

// ------------------------------------------------------------ self-test
// Each mutation of a valid StatefulSet must be rejected.
async function selfTest(sample) {
  const mutations = [
    ["a string where an integer goes", (o) => { o.spec.replicas = "3"; }],
    ["an unknown field", (o) => { o.spec.template.spec.containers[0].prots = []; }],
    ["a bad quantity", (o) => { o.spec.template.spec.containers[0].resources = { limits: { memory: "12 GB" } }; }],
    ["a missing required field", (o) => { delete o.spec.template.spec.containers[0].name; }],
  ];
  const monitor = {
    apiVersion: "monitoring.coreos.com/v1", kind: "ServiceMonitor", metadata: { name: "t" },
    spec: { selector: {}, endpoints: [{ port: "metrics", interval: "15 seconds" }] },
  };
  let caught = 0;
  const saved = problems.length;
  for (const [what, mutate] of mutations) {
    const o = JSON.parse(JSON.stringify(sample));
    mutate(o);
    if (await validateObject(o, "self-test")) fail(`validator self-test: ${what} in a StatefulSet was not rejected`);
    else caught++;
  }
  if (await validateObject(monitor, "self-test")) fail("validator self-test: a bad ServiceMonitor interval was not rejected");
  else caught++;
  // Keep only the self-test's own failures (the rejections above are expected).
  const own = problems.splice(saved).filter((p) => p.startsWith("validator self-test"));
  problems.push(...own);
  return caught;
}

// ------------------------------------------------------------ main
async function main() {
  const argv = process.argv.slice(2);
  let renderedDir = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--rendered") renderedDir = argv[++i];
    else if (argv[i].startsWith("--rendered=")) renderedDir = argv[i].slice("--rendered=".length);
    else { console.error(`validate: unknown argument ${argv[i]}`); process.exit(2); }
  }
  let tmp = null;
  let variants;
  if (renderedDir) {
    variants = fs.readdirSync(renderedDir).filter((f) => f.endsWith(".yaml")).map((f) => f.slice(0, -5)).sort();
  } else {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kvc-validate-"));
    renderedDir = tmp;
    const r = spawnSync("bash", [path.join(deploy, "render.sh"), tmp], { encoding: "utf8" });
    process.stderr.write(r.stderr || "");
    if (r.status === 77) {
      console.log("validate: SKIPPED: kubectl is not installed, nothing to validate (Dockerfiles only)");
      checkDockerfiles();
      for (const p of problems) console.error(`validate: FAIL: ${p}`);
      process.exit(problems.length ? 1 : 77);
    }
    if (r.status !== 0) {
      console.error("validate: FAIL: deploy/render.sh could not render every variant (above)");
      process.exit(1);
    }
    variants = r.stdout.split("\n").filter(Boolean);
  }
  if (variants.length === 0) fail(`no rendered variants in ${renderedDir}`);

  let objects = 0;
  let sample = null;
  const kinds = new Set();
  for (const v of variants) {
    const text = fs.readFileSync(path.join(renderedDir, `${v}.yaml`), "utf8");
    const docs = parseAllDocuments(text);
    const seen = new Set();
    let n = 0;
    for (const [i, doc] of docs.entries()) {
      if (doc.errors.length) {
        for (const e of doc.errors) fail(`${v}: document ${i + 1}: YAML: ${e.message}`);
        continue;
      }
      const obj = doc.toJS();
      if (obj === null || obj === undefined) continue;
      const where = `${v}: ${obj.kind}/${(obj.metadata || {}).name}`;
      if (typeof obj !== "object" || Array.isArray(obj)) {
        fail(`${v}: document ${i + 1} is not an object`);
        continue;
      }
      const key = `${obj.apiVersion} ${obj.kind} ${(obj.metadata || {}).name}`;
      if (seen.has(key)) fail(`${where}: appears twice`);
      seen.add(key);
      if (await validateObject(obj, where)) checkApiRules(obj, where);
      kinds.add(obj.kind);
      if (obj.kind === "StatefulSet" && !sample) sample = obj;
      n++;
    }
    objects += n;
    console.log(`validate: ${v}: ${n} objects`);
  }
  const dockerfiles = checkDockerfiles();
  let caught = 0;
  if (sample) caught = await selfTest(sample);
  else fail("validator self-test: no StatefulSet in the rendered variants to test with");
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });

  if (problems.length) {
    for (const p of problems) console.error(`validate: FAIL: ${p}`);
    console.error(`validate: ${problems.length} problem(s)`);
    process.exit(1);
  }
  console.log(`validate: ${variants.length} variants, ${objects} objects (${[...kinds].sort().join(", ")}), ` +
              `${dockerfiles} Dockerfiles valid; self-test rejected ${caught} broken objects`);
}

main().catch((e) => {
  console.error(`validate: FAIL: ${e.stack || e}`);
  process.exit(1);
});
