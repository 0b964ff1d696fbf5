#!/usr/bin/env bash
# The benchmark with malloc huge pages off (FLAX_RESNET_HUGEPAGES=0) and on (the default), alternated, two
# rounds per stem, then faults.py for both stems. Run from the repository root on an otherwise idle machine:
#   bash results/cpu_2026-11-29_hugepages/run_series.sh
set -euo pipefail
out=results/cpu_2026-11-29_hugepages
for round in 1 2; do
  for variant in cifar imagenet; do
    for pages in off on; do
      env_switch=$([ "$pages" = off ] && echo 0 || echo 1)
      name="bench_resnet18_${variant}_${pages}_run${round}"
      FLAX_RESNET_HUGEPAGES=$env_switch python scripts/benchmark.py --arch resnet18 --variant "$variant" \
        --batch-size 128 --dtypes float32 --frameworks jax,torch --modes jit,eager --steps 3 --warmup 1 \
        --windows 5 --json "$out/$name.json" > "$out/$name.log" 2>&1
      grep -E "^ratio|^host malloc" "$out/$name.log" | sed "s/^/$name: /"
    done
  done
done
for variant in cifar imagenet; do
  FLAX_RESNET_HUGEPAGES=0 python "$out/faults.py" "$variant" > "$out/faults_${variant}_off.log" 2>&1
  python "$out/faults.py" "$variant" > "$out/faults_${variant}_on.log" 2>&1
done
