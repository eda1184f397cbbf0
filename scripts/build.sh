#!/usr/bin/env bash
# Configures and builds dgemma into ${BUILD_DIR:-build}. The CUDA backend is built whenever nvcc is
# found (DGEMMA_CUDA=AUTO); pass -DDGEMMA_CUDA=OFF (or any other CMake option) as arguments.
# BUILD_TARGET=dgemma builds only the command (the demo), not the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDGEMMA_WERROR=ON "$@"
cmake --build "$BUILD_DIR" -j "$(nproc)" ${BUILD_TARGET:+--target "$BUILD_TARGET"}
