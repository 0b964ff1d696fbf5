#!/usr/bin/env bash
# This session's 20-minute CPU runs, one after the other on the otherwise idle machine (run from the repo root):
# the imagenet-stem benchmark with 10 steps per window first (today's speeds), then JAX and torch with as many
# epochs as fit in 20 minutes of training at those speeds, with ~10% margin for the VM's drift.
#   bash results/cpu_2026-11-29_pipeline/run_budget20.sh JAX_EPOCHS TORCH_EPOCHS
set -euo pipefail
out=results/cpu_2026-11-29_pipeline
work=${WORK:-/tmp/budget20}
data=../shared/data/cifar10-jpeg.tar.gz
mkdir -p "$out/runs" "$work"
python scripts/benchmark.py --arch resnet18 --variant imagenet --batch-size 128 --dtypes float32 \
  --frameworks jax,torch --modes jit,eager --steps 10 --warmup 2 --windows 5 \
  --json "$out/bench_imagenet_run3.json" > "$out/bench_imagenet_run3.log" 2>&1
common=(--arch resnet18 --variant imagenet --data "$data" --no-progress --batch-size 128)
/usr/bin/time -v python scripts/train.py "${common[@]}" --epochs "$1" --workdir "$work/jax_r18_imagenet_budget20" \
  > "$out/runs/jax_r18_imagenet_budget20.log" 2>&1
/usr/bin/time -v python scripts/train_torch.py "${common[@]}" --epochs "$2" --device cpu \
  --workdir "$work/torch_r18_imagenet_budget20" > "$out/runs/torch_r18_imagenet_budget20.log" 2>&1
for run in jax_r18_imagenet_budget20 torch_r18_imagenet_budget20; do
  mkdir -p "$out/runs/$run"
  cp "$work/$run"/*.json "$work/$run"/metrics.jsonl "$work/$run"/curves.png "$out/runs/$run/"
done
