#!/usr/bin/env bash
# One lent-GPU session in a fixed time budget: versions, the same-process benchmarks (alone on the GPU), then
# training runs side by side, then a resnet50 benchmark (JAX, torch eager and torch.compile) if time is left.
# Everything lands in $OUT/results.tar.gz plus $OUT/session.log; summarize with scripts/reproduce.py.
#
#   BUDGET=560 DATA=.gpu_data/cifar10-jpeg.tar.gz OUT=/tmp/out bash scripts/gpu_session.sh
#
# Training runs (RUNS, default "torch_seeds jpeg_quality"):
#   jax_seeds     3 seeds of the default recipe in JAX, cifar ResNet-18, on the test set; SEED_FLAGS (flags
#                 joined with commas, e.g. "--cutout,16") adds a sweep's winner to them;
#   torch_seeds   seeds 1 and 2 of the same recipe in the torch reference trainer (seed 0 ran on 2026-11-27);
#   jpeg_quality  the default recipe (JAX, seed 0) on the JPEG copy re-encoded at quality 50 and 25
#                 (scripts/write_dataset.py): how much accuracy JPEG compression costs on this recipe;
#   article       the article recipe on the article variant, up to its full 270 epochs (fewer, with the
#                 schedule shortened proportionally, when the budget needs it; ARTICLE_EPOCHS forces a count);
#   sweep         recipe candidates for the default recipe (JAX, cifar ResNet-18, seed 0), each evaluated on
#                 5,000 held-out training images (--holdout; HOLDOUT sets the number), never on the test set: SWEEP lists them as
#                 name=flags (flags joined with commas); the best one then earns 3 seeds on the test set;
#                 b256 doubles the optimizer steps (an lr check at batch 512 moved nothing: 0.2/0.4/0.8 gave
#                 90.05/90.40/90.24% at 30 epochs); the epoch plan below prices every candidate at the measured
#                 batch-512 rate (its 15% and 60 s margins are what cover b256); every run also records flip-TTA accuracy
#                 (its metrics' last line, the table's "with flip TTA" column);
#   bn_ab         after training, in whatever time is left: the JAX $BN_ARCH step (default resnet50; bf16,
#                 batch 512) with each `--batch-norm` in BN_LIST (default "autodiff fused onepass"), one
#                 process each, then torch eager and torch.compile on the same model when 150 s are still left;
#   profile       before training, where the time goes (`scripts/benchmark.py --profile`): the article
#                 configuration (JAX, fp32, batch 128: host-, launch- or compute-bound?) and resnet50 (bf16,
#                 batch 512: JAX, torch eager, torch.compile); traces stay in /tmp, summaries in the JSON/logs
#                 (the BatchNorm options are `bn_ab`'s, measured 2026-11-28).
# The epoch count of the default-recipe runs is chosen from the measured benchmark throughput so that every
# run finishes inside the budget (at most the recipe's 40), the article's from the article benchmark (or a
# 24,000 img/s guess); both are logged and land in each run's config.json. SMOKE=1 shrinks everything for a
# CPU dry run of this script (tests/test_gpu_session.py runs one on tiny data; CACHE, the decoded-dataset
# cache, WHL, the carried wheels' folder, and QDIR, the re-encoded copies' folder, can be moved). The steps before
# training (benchmarks, profiles, the data preparation) stop where RESERVE s are left (150 with training runs, else
# 0); no run starts with under 60 s to its deadline, or with 0 epochs planned. Without a GPU (and not SMOKE) the
# script stops at once.
#
# Before the first call, here (both folders are git-ignored; pass them as the device tool's carry):
#   mkdir -p .gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz .gpu_data/
#   pip download tensorboardX==2.6.5 --no-deps -d .whl   # the image lacks it; its own jax/flax/optax/orbax
#                                                          # are used (our pinned flax needs our jax)
# then run this script through the device tool with carry [".whl", ".gpu_data"].
#
# Suggested for the next session (one command may run 600 s; the device lends ~900 s in all, start included).
# Done so far: the article recipe's 270 epochs (2026-12-04, results/gpu_2026-12-04/), the BatchNorm options on
# resnet50 (onepass is now the default), both frameworks' benchmarks. Open: the default recipe's accuracy goal.
#   1. BUDGET=555 RUNS=sweep bash scripts/gpu_session.sh: the resnet18 benchmark first (~4 min: its rates,
#      now with onepass, plan the epochs), then the SWEEP candidates side by side on held-out training images;
#   2. on the still-warm machine, the winner's 3 seeds on the test set: BUDGET=<what is left - 30>
#      SKIP_BENCH=1 FORCE_EPOCHS=40 RUNS=jax_seeds SEED_FLAGS=<its flags> (three runs of 40 epochs at
#      ~0.6 s each time-share the GPU: ~2 min plus compilation; without FORCE_EPOCHS the plan, having no
#      benchmark numbers, assumes 15,000 img/s and gives fewer epochs).
#   Later sessions: RUNS=profile (~7 min: where resnet50's step goes, JAX against torch.compile).
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.gpu_data/cifar10-jpeg.tar.gz}
BUDGET=${BUDGET:-540}
SMOKE=${SMOKE:-0}
WHL=${WHL:-.whl}  # carried wheels, if any
RUNS=${RUNS:-torch_seeds jpeg_quality}
SWEEP=${SWEEP:-"base= cutout8=--cutout,8 cutout16=--cutout,16 wd1e-3=--weight-decay,1e-3 b256=--batch-size,256 lr0.4=--lr,0.4"}
HOLDOUT=${HOLDOUT:-5000}  # the sweep's held-out training images (a smaller number for SMOKE's tiny data)
wants() { case " $RUNS " in *" $1 "*) return 0;; esac; return 1; }
T0=$(date +%s)
R=$OUT/r
mkdir -p "$R"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/session.log"; }
exec 3>&1  # the session's stdout, for lines logged by a step whose own output goes to its log file
left() { echo $(( BUDGET - $(elapsed) )); }
# A step's timeout before training: at most N s, and never the last RESERVE s (150 when training runs are wanted,
# else 0), which the training runs need; 0 when nothing is left for it. The fixed limits alone summed to 700 s.
slot() { local t=$1 room=$(( $(left) - RESERVE )); [ "$room" -lt "$t" ] && t=$room; [ "$t" -lt 20 ] && t=0; echo $t; }
bounded() {  # WHAT N CMD...: CMD under a timeout of `slot N` (computed once: `timeout 0` would mean no limit), or
  local what=$1 t; t=$(slot "$2"); shift 2  # skipped, and said, when that is 0
  if [ "$t" = 0 ]; then log "$what: skipped, no time left before the training's reserve" >&3; return; fi
  timeout "$t" "$@"; log "$what done rc=$?" >&3  # to the session's stdout, not into the step's own log
}
pack() { (cd "$R" && find -L . -name checkpoints -prune -o \( -name "*.log" -o -name "*.json" -o -name "*.jsonl" -o -name "*.txt" \
  -o -name "curves.png" \) -print | tar -czf "$OUT/results.tar.gz" -T -); }
trap pack EXIT

# Carried pure-Python wheels (the versions this repo pins), if present; fall back to the image's own.
if ls "$WHL"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
    && export PYTHONPATH=/tmp/site
fi
VERS='import sys, jax, flax, optax, orbax.checkpoint as o, numpy, torch, torchvision
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", o.__version__, "numpy", numpy.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)
print("jax devices", jax.devices(), "torch cuda", torch.cuda.is_available() and torch.cuda.get_device_name())
import flax_resnet, numpy as np
m = flax_resnet.create_model("resnet18")
print("smoke logits", flax_resnet.predict(m, np.zeros((2, 32, 32, 3), np.float32)).shape)'
if ! python3 -c "$VERS" >>"$R/versions.txt" 2>&1; then
  log "carried wheels failed to import; using the image's packages (plus carried tensorboardX)"
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHL"/tensorboard[xX]*.whl
  python3 -c "$VERS" >>"$R/versions.txt" 2>&1 || log "image packages failed too"
fi
cat "$R/versions.txt" | tee -a "$OUT/session.log"
if [ "$SMOKE" != 1 ] && ! python3 -c "import jax; assert jax.default_backend() != 'cpu'" 2>/dev/null; then
  log "error: JAX sees no GPU (its backend is the CPU): stopping rather than spend the session on CPU runs"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$R/gpu.txt" 2>&1
log "gpu: $(tail -n1 "$R/gpu.txt")"

# Decode the JPEG tar once into the .npz cache (CPU) while the benchmark holds the GPU; write the re-encoded
# copies for the JPEG-quality runs and decode them too. Only for training runs (bn_ab and profile need no data).
CACHE=${CACHE:-/tmp/cifar_cache}  # the decoded-dataset cache (.npz)
QUALITIES="50 25"
TRAINING=0; for run in jax_seeds torch_seeds jpeg_quality article sweep; do wants $run && TRAINING=1; done
RESERVE=${RESERVE:-$([ $TRAINING = 1 ] && echo 150 || echo 0)}
QDIR=${QDIR:-/tmp}  # where the re-encoded copies go
PREP=""
set -m  # the preparation in a process group of its own: stopped at the reserve with every process it started
if [ $TRAINING = 1 ]; then (
  rc=0  # any step's failure, not the last command's status (a bare `wait` returned 0 whatever failed)
  python3 -c "from flax_resnet.data import load_dataset; d = load_dataset('$DATA', data_dir='$CACHE'); print('data', d.train_images.shape, d.test_images.shape)" || rc=1
  if wants jpeg_quality; then
    pids=""
    for q in $QUALITIES; do
      { python3 scripts/write_dataset.py "$DATA" "$QDIR/cifar10-q$q.tar.gz" --format jpeg --quality $q --data-dir $CACHE &&
        python3 -c "from flax_resnet.data import load_dataset; load_dataset('$QDIR/cifar10-q$q.tar.gz', data_dir='$CACHE')"; } &
      pids="$pids $!"
    done
    for pid in $pids; do wait "$pid" || rc=1; done
  fi
  exit $rc
) >"$R/data_prep.log" 2>&1 & PREP=$!
fi
set +m

# JAX jit + torch eager first, torch.compile separately: a timeout then loses only the compile record.
if [ "$SMOKE" = 1 ]; then BENCH_ARGS="--steps 1 --warmup 1 --windows 2 --batch-size 8 --dtypes float32"
else BENCH_ARGS="--steps 10 --warmup 3 --windows 5 --batch-size 512 --dtypes bfloat16 --peak-tflops 989"; fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
log "benchmark resnet18 cifar: jax jit, torch eager"
bounded benchmark 150 python3 scripts/benchmark.py --arch resnet18 --variant cifar $BENCH_ARGS --modes jit,eager \
  --json "$R/bench_resnet18_cifar.json" >"$R/bench_resnet18_cifar.log" 2>&1
tail -n 12 "$R/bench_resnet18_cifar.log" | tee -a "$OUT/session.log"
log "benchmark resnet18 cifar: torch.compile"
bounded benchmark 110 python3 scripts/benchmark.py --arch resnet18 --variant cifar $BENCH_ARGS --frameworks torch \
  --modes compile --json "$R/bench_resnet18_cifar_compile.json" >"$R/bench_resnet18_cifar_compile.log" 2>&1
tail -n 4 "$R/bench_resnet18_cifar_compile.log" | tee -a "$OUT/session.log"
fi
if wants profile || wants article; then
  if [ "$SMOKE" = 1 ]; then A_ARGS="--steps 1 --warmup 1 --windows 2 --batch-size 8"
  else A_ARGS="--steps 20 --warmup 5 --windows 5 --batch-size 128"; fi
  PROF=""; wants profile && PROF="--profile /tmp/profile_article"
  log "benchmark resnet18 article fp32 (the article recipe's step): jax jit $PROF"
  bounded benchmark 120 python3 scripts/benchmark.py --arch resnet18 --variant article $A_ARGS --dtypes float32 \
    --frameworks jax --modes jit $PROF --json "$R/bench_resnet18_article.json" >"$R/bench_resnet18_article.log" 2>&1
  grep -A 14 "^host time" "$R/bench_resnet18_article.log" | tee -a "$OUT/session.log"
fi
# The settings of profile's resnet50 and of bn_ab.
if [ "$SMOKE" = 1 ]; then P_ARGS="--steps 1 --warmup 1 --windows 2 --batch-size 8 --dtypes float32"
else P_ARGS="--steps 5 --warmup 2 --windows 5 --batch-size 512 --dtypes bfloat16 --peak-tflops 989"; fi
if wants profile; then  # SKIP_BENCH does not skip it: it is asked for by name
  log "profile resnet50 cifar: jax jit, torch eager"
  bounded profile 150 python3 scripts/benchmark.py --arch resnet50 --variant cifar $P_ARGS --modes jit,eager \
    --profile /tmp/profile_r50 --json "$R/bench_resnet50_cifar_profile.json" >"$R/bench_resnet50_cifar_profile.log" 2>&1
  grep -A 14 "^profile" "$R/bench_resnet50_cifar_profile.log" | tee -a "$OUT/session.log"
  if [ "$SMOKE" != 1 ]; then
    log "profile resnet50 cifar: torch.compile"
    bounded profile 170 python3 scripts/benchmark.py --arch resnet50 --variant cifar $P_ARGS --frameworks torch \
      --modes compile --profile /tmp/profile_r50 --json "$R/bench_resnet50_cifar_compile_profile.json" \
      >"$R/bench_resnet50_cifar_compile_profile.log" 2>&1
    grep -A 14 "^profile" "$R/bench_resnet50_cifar_compile_profile.log" | tee -a "$OUT/session.log"
  fi
  pack
fi
if [ -n "$PREP" ]; then  # never past the training's reserve: a stuck decode must not take the session
  while kill -0 "$PREP" 2>/dev/null && [ "$(left)" -gt "$RESERVE" ]; do sleep 2; done
  kill -0 "$PREP" 2>/dev/null && { log "data prep still running at the training's reserve: stopped"; kill -- -"$PREP"; }
  wait "$PREP"; log "data prep rc=$? $(tail -n1 "$R/data_prep.log")"
fi

# Epochs that fit: GPU time adds up across processes (time-sliced), so one epoch of all runs costs the sum
# of their epoch times at the measured rates, plus 15% for evaluation; ~100 s are kept for compilation.
N_JAX=0; N_TORCH=0; N_ARTICLE=0
wants jax_seeds && N_JAX=$((N_JAX + 3))
wants jpeg_quality && N_JAX=$((N_JAX + $(echo $QUALITIES | wc -w)))
wants sweep && N_JAX=$((N_JAX + $(echo $SWEEP | wc -w)))
wants torch_seeds && N_TORCH=2
wants article && N_ARTICLE=1
EPOCHS=$(python3 - "$R/bench_resnet18_cifar.json" "$(left)" "$SMOKE" $N_JAX $N_TORCH $N_ARTICLE <<'EOF'
import json, sys
path, left, smoke = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
n_jax, n_torch, n_article = map(int, sys.argv[4:7])
jax_ips, torch_ips = 15000.0, 8000.0
try:
    for r in json.load(open(path)):
        if r["framework"] == "jax" and r.get("input") == "augmented":
            jax_ips = r["train_images_per_second"]
        if r["framework"] == "torch" and r["mode"] == "eager":
            torch_ips = r["train_images_per_second"]
except Exception as e:  # no benchmark numbers: keep the conservative guesses
    print(f"planning without benchmark numbers ({e})", file=sys.stderr)
per_epoch = 1.15 * (n_jax * 50000 / jax_ips + n_torch * 50000 / torch_ips + n_article * 50000 / 40000)
usable = left - 100 - 60  # compilation, and a 60 s margin; the resnet50 benchmark only gets what is left
print(1 if smoke else max(0, min(40, int(usable / max(per_epoch, 1e-9)))))  # 0: no time to train
print(f"jax {jax_ips:.0f} img/s, torch {torch_ips:.0f} img/s, {per_epoch:.1f} s per epoch of all runs, {left:.0f} s left",
      file=sys.stderr)
EOF
)
EPOCHS=${FORCE_EPOCHS:-$EPOCHS}
log "training epochs: $EPOCHS (runs: $RUNS)"
if wants article; then  # its epochs from the article benchmark and the time left, when it has the GPU alone
  ARTICLE_PLAN=$(python3 - "$R/bench_resnet18_article.json" "$(left)" "$SMOKE" "$EPOCHS" "$N_JAX$N_TORCH" <<'EOF'
import json, sys
path, left, smoke, epochs, others = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
ips = 24000.0  # the trainer's own rate on an H200, 2026-11-28, before the per-call host work was cut
try:
    ips = next(r["train_images_per_second"] for r in json.load(open(path)) if r.get("input") == "augmented")
except Exception as e:
    print(f"planning the article run without its benchmark ({e})", file=sys.stderr)
per_epoch = 50000 / ips + 0.3  # plus the epoch's evaluation, metrics line and its share of checkpoints
if smoke:
    print(1)
elif others != "00":
    print(epochs)  # sharing the GPU with other runs: the shared plan above decides
else:
    print(max(1, min(270, int((left - 60 - 40) / per_epoch))))  # compilation, and a 60 s margin
print(f"article: {ips:.0f} img/s, {per_epoch:.2f} s per epoch, {left:.0f} s left", file=sys.stderr)
EOF
)
  ARTICLE_EPOCHS=${ARTICLE_EPOCHS:-$ARTICLE_PLAN}
  log "article epochs: $ARTICLE_EPOCHS of 270 (its lr boundaries are fractions of the run)"
fi
DEADLINE=$(( $(left) - 25 ))
TRAIN_OK=$TRAINING  # `timeout` takes 0 as no limit and refuses a negative one: no run without the time for it
if [ $TRAINING = 1 ] && { [ "$DEADLINE" -lt 60 ] || [ "${EPOCHS:-0}" -lt 1 ]; }; then
  log "error: no time left to train ($DEADLINE s before the deadline, $EPOCHS epochs planned): no runs started"
  TRAIN_OK=0
fi
train_wants() { [ "$TRAIN_OK" = 1 ] && wants "$1"; }
EXTRA=""; [ "$SMOKE" = 1 ] && EXTRA="--max-steps 2 --batch-size 16"
# The runs' workdirs live outside $OUT, which each device call empties, so that the same command run again on
# the still-warm machine resumes the JAX runs that the first call's deadline stopped (each checkpoints on
# SIGTERM). Give the second call FORCE_EPOCHS / ARTICLE_EPOCHS as logged by the first: a run resumes only with
# its own epochs. The torch trainer does not resume: an unfinished torch run's workdir is refused by the second
# call (leave torch_seeds out of its RUNS, or remove those workdirs to train them again).
RUNDIR=${RUNDIR:-/tmp/gpu_runs}
mkdir -p "$RUNDIR" && rm -rf "$R/runs" && ln -s "$RUNDIR" "$R/runs"
jax_run() {  # name, data, seed, more flags...
  local name=$1 data=$2 seed=$3; shift 3
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout -k 20 $DEADLINE python3 scripts/train.py --arch resnet18 --variant cifar \
    --recipe default --epochs "$EPOCHS" --seed "$seed" --data "$data" --data-dir $CACHE --no-progress \
    --workdir "$R/runs/$name" $EXTRA "$@" >>"$R/runs/$name.log" 2>&1 &
}
if train_wants jax_seeds; then
  IFS=, read -r -a seed_flags <<<"${SEED_FLAGS:-}"
  for seed in 0 1 2; do jax_run jax_default_r18_s$seed "$DATA" $seed "${seed_flags[@]}"; done
fi
if train_wants jpeg_quality; then for q in $QUALITIES; do jax_run jax_default_r18_q${q}_s0 "$QDIR/cifar10-q$q.tar.gz" 0; done; fi
if train_wants sweep; then
  for item in $SWEEP; do  # name=flag,value,...: the flags follow the later ones of jax_run, so they win
    IFS=, read -r -a flags <<<"${item#*=}"
    jax_run "sweep_${item%%=*}_holdout${HOLDOUT}_s0" "$DATA" 0 --holdout "$HOLDOUT" "${flags[@]}"
  done
fi
if train_wants torch_seeds; then
  TORCH_FLAGS="--amp --channels-last --device cuda"; [ "$SMOKE" = 1 ] && TORCH_FLAGS=""  # cuda: no silent CPU run
  for seed in 1 2; do
    timeout -k 20 $DEADLINE python3 scripts/train_torch.py --arch resnet18 --variant cifar --recipe default --epochs "$EPOCHS" \
      --seed $seed --data "$DATA" --data-dir $CACHE --no-progress $TORCH_FLAGS \
      --workdir "$R/runs/torch_default_r18_s$seed" $EXTRA >>"$R/runs/torch_default_r18_s$seed.log" 2>&1 &
  done
fi
if train_wants article; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout -k 20 $DEADLINE python3 scripts/train.py --arch resnet18 --variant article \
    --recipe article --epochs "$ARTICLE_EPOCHS" --seed 0 --data "$DATA" --data-dir $CACHE --no-progress \
    --workdir "$R/runs/jax_article_r18_s0" $EXTRA >>"$R/runs/jax_article_r18_s0.log" 2>&1 &
fi
wait
log "training done"
for f in "$R"/runs/*.log; do [ -e "$f" ] || continue; echo "== $f: $(grep -E 'final:|error' "$f" | tail -n1)" | tee -a "$OUT/session.log"; done
if ls -d "$R"/runs/*/ >/dev/null 2>&1; then  # the results table of this session's runs, one row per setting
  python3 scripts/reproduce.py table "$R"/runs/*/ 2>&1 | tee -a "$OUT/session.log"  # each run records its device
fi
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader >>"$R/gpu.txt" 2>&1
pack

[ "$SMOKE" = 1 ] || BENCH_ARGS="--steps 5 --warmup 2 --windows 5 --batch-size 512 --dtypes bfloat16 --peak-tflops 989"
R50_BENCH=1; { [ "${SKIP_BENCH:-0}" = 1 ] || wants profile || wants bn_ab; } && R50_BENCH=0  # measured there
if [ $R50_BENCH = 1 ] && [ "$(left)" -gt 60 ]; then
  log "benchmark resnet50 cifar: jax jit, torch eager"
  timeout $(( $(left) - 10 )) python3 scripts/benchmark.py --arch resnet50 --variant cifar $BENCH_ARGS --modes jit,eager \
    --json "$R/bench_resnet50_cifar.json" >"$R/bench_resnet50_cifar.log" 2>&1
  log "benchmark resnet50 rc=$?"; tail -n 12 "$R/bench_resnet50_cifar.log" | tee -a "$OUT/session.log"
  pack
fi
if [ $R50_BENCH = 1 ] && [ "$(left)" -gt 60 ]; then
  log "benchmark resnet50 cifar: torch.compile"
  timeout $(( $(left) - 10 )) python3 scripts/benchmark.py --arch resnet50 --variant cifar $BENCH_ARGS --frameworks torch \
    --modes compile --json "$R/bench_resnet50_cifar_compile.json" >"$R/bench_resnet50_cifar_compile.log" 2>&1
  log "benchmark resnet50 compile rc=$?"; tail -n 4 "$R/bench_resnet50_cifar_compile.log" | tee -a "$OUT/session.log"
fi
if wants bn_ab; then  # after training, in what is left: the JAX step with each train-mode BatchNorm
  BN_ARCH=${BN_ARCH:-resnet50}
  for bn in ${BN_LIST:-autodiff fused onepass}; do
    if [ "$(left)" -lt 70 ]; then log "bn_ab: $(left) s left, skipping --batch-norm $bn and after"; break; fi
    log "benchmark $BN_ARCH cifar: jax jit --batch-norm $bn"
    timeout -k 10 $(( $(left) - 10 )) python3 scripts/benchmark.py --arch $BN_ARCH --variant cifar $P_ARGS \
      --frameworks jax --modes jit --batch-norm $bn --json "$R/bench_${BN_ARCH}_cifar_bn_$bn.json" \
      >"$R/bench_${BN_ARCH}_cifar_bn_$bn.log" 2>&1
    log "benchmark done rc=$?"; grep -E "^jax " "$R/bench_${BN_ARCH}_cifar_bn_$bn.log" | tee -a "$OUT/session.log"
    pack
  done
  if [ "$(left)" -gt 150 ]; then  # a cold resnet50 torch.compile took over 111 s on 2026-11-28
    log "benchmark $BN_ARCH cifar: torch eager, torch.compile"
    timeout -k 10 $(( $(left) - 10 )) python3 scripts/benchmark.py --arch $BN_ARCH --variant cifar $P_ARGS \
      --frameworks torch --modes eager,compile --json "$R/bench_${BN_ARCH}_cifar_torch.json" \
      >"$R/bench_${BN_ARCH}_cifar_torch.log" 2>&1
    log "benchmark done rc=$?"; tail -n 4 "$R/bench_${BN_ARCH}_cifar_torch.log" | tee -a "$OUT/session.log"
  fi
fi
cp "$OUT/session.log" "$R/"
log "end"
