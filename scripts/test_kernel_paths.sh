#!/usr/bin/env bash
# Execute every notebook again (nbval) under other CPU kernel paths, failing on any error.
#
# Floating-point results depend on which kernels the CPU runs: ATen picks AVX-512, AVX2 or
# plain C++ code by what the processor supports, and MKL picks its own code path. A claim in
# a notebook (an assert in a "check yourself" cell) must hold on every one of them, so CI
# runs the notebooks under each configuration below. Extra pytest arguments pass through:
#
#   scripts/test_kernel_paths.sh                          # all notebooks, all configurations
#   scripts/test_kernel_paths.sh notebooks/07_*.ipynb     # one notebook
set -euo pipefail
cd "$(dirname "$0")/.."

configurations=(
    "ATEN_CPU_CAPABILITY=default"                  # ATen's portable C++ kernels, no SIMD
    "MKL_CBWR=AVX2"                                # MKL's AVX2 code path, ATen as detected
    "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"       # an AVX2-only processor, both libraries
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(notebooks)
fi

for configuration in "${configurations[@]}"; do
    echo "=== notebooks under: $configuration"
    # shellcheck disable=SC2086  # the configuration is a list of NAME=VALUE words
    env $configuration python -m pytest -q "${targets[@]}"
done
