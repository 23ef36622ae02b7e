#!/usr/bin/env bash
# ctest deploy_validate: validates every rendered variant of deploy/k8s against
# the Kubernetes and Prometheus Operator schemas, and the Dockerfiles
# (validate.mjs says what exactly). Installs the pinned packages first when
# they are missing or stale (install.sh; no network when they are present).
# Exit 77 (ctest: skipped) when node or kubectl is not installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v node >/dev/null 2>&1; then
  echo "deploy/validate: SKIPPED: node is not installed (scripts/setup.sh installs nodejs)"
  exit 77
fi
bash "$here/install.sh"
exec node "$here/validate.mjs" "$@"
