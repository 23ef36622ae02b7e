#!/usr/bin/env bash
# Renders every deployable variant of deploy/k8s with `kubectl kustomize`
# (offline), one multi-document YAML file per variant:
#
#   deploy/render.sh OUTDIR            # writes OUTDIR/<variant>.yaml, prints the variant names
#
# Variants: for each root (base, and every overlays/<name>), the root alone,
# the root with each component under components/, and the root with all
# components. Names: base, base+tls, base+servicemonitor, base+all-components,
# single-node, single-node+tls, ... deploy/check.sh and deploy/validate/ check
# every one of them.
#
# Exit status: 0 when every variant renders; 1 when one does not (kustomize's
# error is printed); 77 when kubectl is not installed (callers report a skip).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$here/k8s"
out="${1:?usage: deploy/render.sh OUTDIR}"

KUBECTL="${KUBECTL:-kubectl}"
if ! command -v "$KUBECTL" >/dev/null 2>&1; then
  echo "render.sh: kubectl not found (needed for 'kubectl kustomize'); install kubectl >= 1.27" >&2
  exit 77
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

roots=("base")
for d in "$k8s"/overlays/*/; do
  [ -f "$d/kustomization.yaml" ] && roots+=("overlays/$(basename "$d")")
done
components=()
for d in "$k8s"/components/*/; do
  [ -f "$d/kustomization.yaml" ] && components+=("components/$(basename "$d")")
done

# render NAME ROOT [COMPONENT...]: a root with components needs a kustomization
# of its own; kustomize refuses absolute paths, so it names them relatively.
render() {
  local name=$1 root=$2 dir
  shift 2
  if [ $# -eq 0 ]; then
    dir="$k8s/$root"
  else
    dir="$out/.kustomize/$name"
    mkdir -p "$dir"
    {
      echo "apiVersion: kustomize.config.k8s.io/v1beta1"
      echo "kind: Kustomization"
      echo "resources:"
      echo "  - $(realpath --relative-to="$dir" "$k8s/$root")"
      echo "components:"
      local c
      for c in "$@"; do echo "  - $(realpath --relative-to="$dir" "$k8s/$c")"; done
    } >"$dir/kustomization.yaml"
  fi
  if ! "$KUBECTL" kustomize "$dir" >"$out/$name.yaml.tmp" 2>"$out/$name.err"; then
    echo "render.sh: kubectl kustomize failed for variant '$name' ($root${*:+ + $*}):" >&2
    sed 's/^/    /' "$out/$name.err" >&2
    return 1
  fi
  mv -f "$out/$name.yaml.tmp" "$out/$name.yaml"
  rm -f "$out/$name.err"
  echo "$name"
}

status=0
for root in "${roots[@]}"; do
  rname="$(basename "$root")"
  render "$rname" "$root" || status=1
  for c in "${components[@]}"; do
    render "$rname+$(basename "$c")" "$root" "$c" || status=1
  done
  if [ ${#components[@]} -gt 1 ]; then
    render "$rname+all-components" "$root" "${components[@]}" || status=1
  fi
done
rm -rf "$out/.kustomize"
exit $status
