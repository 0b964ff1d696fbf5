#!/usr/bin/env bash
# torch eager alone in its process (the benchmark with --frameworks torch), malloc huge pages off and on.
# Run from the repository root on an otherwise idle machine: bash results/cpu_2026-11-29_hugepages/run_torch_alone.sh
set -euo pipefail
out=results/cpu_2026-11-29_hugepages
for variant in imagenet cifar; do
  for pages in off on; do
    env_switch=$([ "$pages" = off ] && echo 0 || echo 1)
    FLAX_RESNET_HUGEPAGES=$env_switch python scripts/benchmark.py --arch resnet18 --variant "$variant" --batch-size 128 \
      --dtypes float32 --frameworks torch --modes eager --steps 3 --warmup 1 --windows 5 \
      --json "$out/torch_alone_${variant}_${pages}.json" > "$out/torch_alone_${variant}_${pages}.log" 2>&1
    grep -E "^torch|^host malloc" "$out/torch_alone_${variant}_${pages}.log"
  done
done
