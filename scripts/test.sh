#!/usr/bin/env bash
# Installs what is missing, builds everything (service, client, tests,
# benchmarks) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
BUILD_DIR="${KVC_BUILD_DIR:-build}"
cd "$BUILD_DIR"
ctest --output-on-failure -j "${KVC_JOBS:-2}" --timeout 600
