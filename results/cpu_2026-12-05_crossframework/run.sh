#!/usr/bin/env bash
# Cross-framework runs on real data (CPU): a torch_ref run scored by the JAX evaluator, then a JAX run started
# from that torch run's weights with --init-weights. Run from the repository root:
#   bash results/cpu_2026-12-05_crossframework/run.sh
set -euo pipefail
DATA=../shared/data/cifar10-jpeg.tar.gz
HERE=results/cpu_2026-12-05_crossframework
RUNS=${RUNS:-/tmp/crossframework_runs}
rm -rf "$RUNS"
COMMON=(--arch resnet18 --variant imagenet --data "$DATA" --batch-size 128 --no-progress)
# 1. torch, 1 epoch of the default recipe (its own final evaluation, with flip TTA, is in its metrics.jsonl)
python scripts/train_torch.py "${COMMON[@]}" --epochs 1 --device cpu --workdir "$RUNS/torch" 2>&1 | tee "$HERE/torch_train.log"
# 2. the same run scored by the JAX evaluator (Flax model built from its config.json + model.safetensors)
python scripts/evaluate.py "$RUNS/torch" --flip-tta --out "$RUNS/torch_confusion.png" 2>&1 | tee "$HERE/jax_evaluates_torch.log"
tail -n 1 "$RUNS/torch/metrics.jsonl" > "$HERE/torch_metrics_last.json"
# 3. JAX, 1 epoch more from the torch run's weights (a fresh one-cycle schedule)
python scripts/train.py "${COMMON[@]}" --epochs 1 --init-weights "$RUNS/torch/model.safetensors" --workdir "$RUNS/jax_from_torch" 2>&1 | tee "$HERE/jax_from_torch.log"
cp "$RUNS/jax_from_torch/metrics.jsonl" "$HERE/jax_from_torch_metrics.jsonl"
