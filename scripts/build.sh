#!/usr/bin/env bash
# Configures and builds into ./build (or $KVC_BUILD_DIR). Extra arguments are
# ninja targets; none builds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${KVC_BUILD_DIR:-build}"
JOBS="${KVC_JOBS:-2}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${KVC_BUILD_TYPE:-RelWithDebInfo}" ${KVC_CMAKE_ARGS:-}
fi
ninja -C "$BUILD_DIR" -j "$JOBS" "$@"
