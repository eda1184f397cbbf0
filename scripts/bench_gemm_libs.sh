#!/usr/bin/env bash
# Builds and runs scripts/bench_gemm_libs.cpp: the GEMM libraries Debian ships (OpenBLAS pthread and OpenMP
# builds, BLIS, ATLAS, oneDNN, Eigen) timed side by side, in one process, on dgemma's GEMM shapes; the
# results and the choice they led to are in docs/performance.md ("GEMM library").
#
#   scripts/bench_gemm_libs.sh [--install] [bench options: --threads 1,2 --reps 5 --block-ms 15
#                                           --shapes all|decode|large --libs A,B --csv FILE]
#
# --install: apt-get install the libraries first (root or sudo). They are only needed by this benchmark,
# not by dgemma's build. The binary goes to ${BUILD_DIR:-build-gemm-libs}/bench_gemm_libs.
# Eigen is compiled with -O3 -march=native (its best case on this machine; dgemma itself is built without
# -march); the BLAS libraries are Debian's runtime-dispatched builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(libopenblas0-pthread libopenblas0-openmp libopenblas-dev libblis4-openmp libblis-dev libatlas3-base
          libdnnl-dev libeigen3-dev)
if [[ ${1:-} == --install ]]; then
  shift
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi
BUILD_DIR=${BUILD_DIR:-build-gemm-libs}
mkdir -p "$BUILD_DIR"
g++ -std=c++20 -O3 -march=native -fopenmp -DNDEBUG -I/usr/include/eigen3 scripts/bench_gemm_libs.cpp \
    -o "$BUILD_DIR/bench_gemm_libs" -ldnnl -ldl
# No library's threads are set from the environment: the bench sets each library's count itself.
env -u OPENBLAS_NUM_THREADS -u OMP_NUM_THREADS -u BLIS_NUM_THREADS "$BUILD_DIR/bench_gemm_libs" "$@"
