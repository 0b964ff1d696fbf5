#!/usr/bin/env bash
# The benchmark runs of this folder (augmented and fixed JAX steps timed in alternating windows), one after
# another on an otherwise idle machine; run from the repository root:
#   bash results/cpu_2026-11-29_pipeline/run_bench.sh RUN VARIANT...
# DIR=<folder> writes the logs and JSON there instead (a later session on another machine).
set -euo pipefail
run=$1
shift
for variant in "$@"; do
  name="${DIR:-results/cpu_2026-11-29_pipeline}/bench_${variant}_run${run}"
  python scripts/benchmark.py --arch resnet18 --variant "$variant" --batch-size 128 --dtypes float32 \
    --frameworks jax,torch --modes jit,eager --steps 3 --warmup 1 --windows 5 --json "$name.json" > "$name.log" 2>&1
  grep -E "^ratio|^input pipeline" "$name.log" | sed "s|^|$name: |"
done
