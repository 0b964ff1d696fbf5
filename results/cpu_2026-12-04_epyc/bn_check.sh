#!/usr/bin/env bash
# The same short training run with each train-mode BatchNorm (same seed, same batches): does onepass, the
# default since 2026-12-04, train as fused and autodiff do? Run from the repository root, machine idle:
#   bash results/cpu_2026-12-04_epyc/bn_check.sh
set -euo pipefail
dir=results/cpu_2026-12-04_epyc/bn_check
mkdir -p "$dir"
small=/tmp/cifar10-small.tar.gz  # 128 train and 100 test images per class of the real data
[ -f $small ] || python scripts/write_dataset.py ../shared/data/cifar10-jpeg.tar.gz $small --train-per-class 128 \
  --test-per-class 100
for bn in autodiff fused onepass; do
  rm -rf "/tmp/bn_check_$bn"
  python scripts/train.py --arch resnet18 --variant imagenet --epochs 15 --batch-size 128 --seed 0 --data $small --no-progress \
    --batch-norm $bn --workdir "/tmp/bn_check_$bn" > "$dir/train_$bn.log" 2>&1
  cp "/tmp/bn_check_$bn/metrics.jsonl" "$dir/metrics_$bn.jsonl"
done
python - "$dir" <<'PY' | tee "$dir/summary.txt"
import json, sys
d = sys.argv[1]
runs = {bn: [json.loads(line) for line in open(f"{d}/metrics_{bn}.jsonl")] for bn in ("autodiff", "fused", "onepass")}
print("epoch | train loss autodiff / fused / onepass | test acc % autodiff / fused / onepass")
for i in range(len(runs["fused"])):
    loss = " / ".join(f"{runs[b][i]['train_loss']:.6f}" for b in runs)
    acc = " / ".join(f"{100 * runs[b][i]['test_acc']:.1f}" for b in runs)
    print(f"{runs['fused'][i]['epoch']:5d} | {loss} | {acc}")
for b in ("autodiff", "onepass"):
    first = next((r["epoch"] for r, f in zip(runs[b], runs["fused"]) if abs(r["train_loss"] - f["train_loss"]) > 1e-3),
                 None)
    print(f"{b} vs fused: first epoch whose train loss differs by more than 1e-3: {first}")
PY
