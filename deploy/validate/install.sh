#!/usr/bin/env bash
# Installs deploy/validate's pinned npm packages into deploy/validate/node_modules
# (`npm ci` from package-lock.json). Idempotent and offline when they are
# already there: a stamp in node_modules records the lock file's sha256, so
# npm runs only when the lock file changed or node_modules is missing.
# Tarballs are cached in .cache/npm-cache/ of the repository.
# Run by scripts/setup.sh and by deploy/validate/run.sh (ctest deploy_validate).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
stamp="$here/node_modules/.kvc-package-lock.sha256"

want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "deploy/validate: npm not found: run scripts/setup.sh" >&2; exit 1; }
echo "deploy/validate: npm ci (kubernetes-models, @kubernetes-models/prometheus-operator, yaml, dockerfile-utils)"
if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error --prefer-offline \
        --cache "$repo/.cache/npm-cache" >/dev/null); then
  echo "deploy/validate: npm ci failed (it needs the npm registry once; later runs use node_modules)" >&2
  exit 1
fi
echo "$want" >"$stamp"
