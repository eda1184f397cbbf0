#!/usr/bin/env bash
# Installs the Debian packages dgemma builds against. Idempotent and non-interactive: packages already
# present are left alone, and apt is not touched at all when nothing is missing. The CUDA toolkit
# (nvcc, cuBLAS, cuBLASLt, NCCL) is taken from /usr/local/cuda when present; it is not installed here.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin            # MPI
  libhdf5-openmpi-dev                   # parallel HDF5, openmpi flavour (checkpoints)
  libboost-program-options-dev          # command line and INI job files
  libfmt-dev nlohmann-json3-dev doctest-dev
  libopenblas-dev                       # CPU GEMM
  libdnnl-dev                           # packed constant weights (oneDNN; -DDGEMMA_ONEDNN=OFF to do without)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
