#!/usr/bin/env bash
# paired.py with malloc huge pages on and off: imagenet stem 6 rounds each, cifar stem 4 rounds each.
# Run from the repository root on an otherwise idle machine: bash results/cpu_2026-11-29_hugepages/run_paired.sh
set -euo pipefail
out=results/cpu_2026-11-29_hugepages
for variant in imagenet cifar; do
  rounds=$([ "$variant" = imagenet ] && echo 6 || echo 4)
  python "$out/paired.py" "$variant" "$rounds" 2 > "$out/paired_${variant}_on.log" 2>&1
  FLAX_RESNET_HUGEPAGES=0 python "$out/paired.py" "$variant" "$rounds" 2 > "$out/paired_${variant}_off.log" 2>&1
done
