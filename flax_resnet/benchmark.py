"""Training/evaluation throughput of the JAX models against the PyTorch reference, in one process.

Every number is a median over several timed windows after warm-up, with compile time reported apart. FLOP
counts are analytic (conv + linear multiply-adds from the layer shapes; 1 multiply-add = 2 FLOPs; a training
step = 3x the forward FLOPs: forward, gradient w.r.t. activations, gradient w.r.t. weights). Peak memory on
CPU is the process's `resource.getrusage` maxrss, a high-water mark over the whole process so far (XLA
allocates outside Python, so tracemalloc would miss it); on GPU it is the framework's device peak.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import data as data_lib
from flax_resnet import hugepages, models, profiling
from flax_resnet.distributed import make_mesh, put_batch
from flax_resnet.machine import cpu_model
from flax_resnet.packing import StatePacking

FRAMEWORKS: tuple[str, ...] = ("jax", "torch")
MODES: tuple[str, ...] = ("jit", "eager", "compile")
# float64 is the parity suite's: it needs 64-bit JAX for the whole process, which would change the other rows.
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
RECORD_KEYS: tuple[str, ...] = (
    "framework",
    "mode",
    "dtype",
    "arch",
    "variant",
    "batch_size",
    "device",
    "input",
    "train_images_per_second",
    "eval_images_per_second",
    "compile_seconds",
    "peak_memory_mb",
    "memory_source",
    "train_flops_per_image",
    "achieved_tflops",
    "fraction_of_peak",
    "window_images_per_second",
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One conv or linear layer of a model at a given input size (shapes per image)."""

    name: str
    kind: str  # "conv" or "linear"
    h: int
    w: int
    cin: int
    cout: int
    k: int
    stride: int

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output map size with the models' symmetric k//2 padding."""
        p = self.k // 2
        return (self.h + 2 * p - self.k) // self.stride + 1, (self.w + 2 * p - self.k) // self.stride + 1

    @property
    def macs(self) -> int:
        """Multiply-adds per image."""
        ho, wo = self.out_hw
        return ho * wo * self.k * self.k * self.cin * self.cout


def model_layers(arch: str, variant: str, image_size: int = 32, num_classes: int = 10) -> list[Layer]:
    """Every conv and linear layer of `arch`/`variant` for square `image_size` inputs, from the depth table."""
    models.check_names(arch, variant)
    kind, depths = models.ARCHS[arch]
    expansion = 1 if kind == "basic" else 4
    layers: list[Layer] = []
    s = image_size
    if variant == "cifar":
        layers.append(Layer("conv1", "conv", s, s, 3, 64, 3, 1))
    else:
        layers.append(Layer("conv1", "conv", s, s, 3, 64, 7, 2))
        s = layers[-1].out_hw[0]
        s = (s + 2 - 3) // 2 + 1  # max-pool 3x3 stride 2 pad 1
    cin = 64
    for stage, (width, stride, n) in enumerate(zip(models.WIDTHS, models.STRIDES, depths, strict=True), start=1):
        for b in range(n):
            st = stride if b == 0 else 1
            cout = width * expansion
            name = f"layer{stage}.{b}"
            projection = (b == 0 and variant == "article") or st != 1 or cin != cout
            if kind == "basic":
                block = [Layer(f"{name}.conv1", "conv", s, s, cin, width, 3, st)]
                s2 = block[0].out_hw[0]
                block.append(Layer(f"{name}.conv2", "conv", s2, s2, width, width, 3, 1))
            else:
                block = [Layer(f"{name}.conv1", "conv", s, s, cin, width, 1, 1)]
                block.append(Layer(f"{name}.conv2", "conv", s, s, width, width, 3, st))
                s2 = block[1].out_hw[0]
                block.append(Layer(f"{name}.conv3", "conv", s2, s2, width, cout, 1, 1))
            if projection:
                block.append(Layer(f"{name}.downsample.0", "conv", s, s, cin, cout, 1, st))
            layers += block
            s, cin = s2, cout
    fc_in = cin * s * s if variant == "article" else cin
    layers.append(Layer("fc", "linear", 1, 1, fc_in, num_classes, 1, 1))
    return layers


def forward_macs(arch: str, variant: str, image_size: int = 32, num_classes: int = 10) -> int:
    """Conv + linear multiply-adds of one forward pass for one image (BN, ReLU, pooling not counted)."""
    return sum(layer.macs for layer in model_layers(arch, variant, image_size, num_classes))


def train_flops_per_image(arch: str, variant: str, image_size: int = 32, num_classes: int = 10) -> int:
    """Training FLOPs per image: 3 x forward (forward, input gradients, weight gradients), 2 FLOPs per MAC."""
    return 3 * 2 * forward_macs(arch, variant, image_size, num_classes)


# ------------------------------------------------------------------------------------------- timing


def time_windows(
    run: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, windows: int, steps: int
) -> list[float]:
    """Seconds of each of `windows` windows of `steps` calls of `run`, after `warmup` untimed calls."""
    return time_windows_alternating([run], sync, warmup, windows, steps)[0]


def time_windows_alternating(
    runs: Sequence[Callable[[], Any]], sync: Callable[[Any], Any], warmup: int, windows: int, steps: int
) -> list[list[float]]:
    """`time_windows` for several calls at once, window by window in ABBA order (reversed on odd windows).

    A shared machine's speed drifts by tens of percent within a minute; timed in turn, every call sees the
    same drift, so the ratio of two calls' same-numbered windows is a paired comparison.
    """
    for run in runs:
        out = None
        for _ in range(warmup):
            out = run()
        sync(out)
    times: list[list[float]] = [[] for _ in runs]
    for w in range(windows):
        for i in range(len(runs)) if w % 2 == 0 else reversed(range(len(runs))):
            start = time.perf_counter()
            for _ in range(steps):
                out = runs[i]()
            sync(out)
            times[i].append(time.perf_counter() - start)
    return times


def call_timer(run: Callable[[], Any]) -> tuple[Callable[[], Any], list[float]]:
    """`run` wrapped to record how long each call takes to return (seconds, appended to the list).

    With asynchronous dispatch that is the host's own work per call (flattening arguments, dispatch); where
    it approaches the step time, the loop is host-bound and the device waits for it.
    """
    seconds: list[float] = []

    def timed() -> Any:
        start = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - start)
        return out

    return timed, seconds


def cpu_peak_rss_mb() -> float:
    """Process peak resident set size so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _synthetic(batch_size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.int32)
    return images, labels


def _record(
    framework: str,
    mode: str,
    dtype: str,
    arch: str,
    variant: str,
    batch_size: int,
    device: str,
    input_kind: str,
    train_times: Sequence[float],
    eval_times: Sequence[float],
    steps: int,
    compile_seconds: float,
    peak_memory_mb: float,
    memory_source: str,
    peak_tflops: float | None,
) -> dict[str, Any]:
    per_window = [steps * batch_size / t for t in train_times]
    train_ips = statistics.median(per_window)
    eval_ips = statistics.median(steps * batch_size / t for t in eval_times) if eval_times else None
    flops = train_flops_per_image(arch, variant)
    achieved = train_ips * flops / 1e12
    return {
        "framework": framework,
        "mode": mode,
        "dtype": dtype,
        "arch": arch,
        "variant": variant,
        "batch_size": batch_size,
        "device": device,
        "input": input_kind,
        "train_images_per_second": train_ips,
        "eval_images_per_second": eval_ips,
        "compile_seconds": compile_seconds,
        "peak_memory_mb": peak_memory_mb,
        "memory_source": memory_source,
        "train_flops_per_image": flops,
        "achieved_tflops": achieved,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops else None,
        "window_images_per_second": per_window,
        "malloc_hugepages": hugepages.enabled(),  # this process's malloc asks for huge pages (hugepages.py)
        "malloc_pages": hugepages.describe(),
    }


# ---------------------------------------------------------------------------------------------- jax


def jax_device_name() -> str:
    """Platform and kind of the default JAX device, e.g. 'cpu (AMD EPYC 7B13)' or 'gpu (NVIDIA H100)'."""
    d = jax.devices()[0]
    kind = cpu_model() if d.platform == "cpu" else d.device_kind
    return f"{d.platform} ({kind})"


def _jax_memory() -> tuple[float, str]:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return cpu_peak_rss_mb(), "process maxrss (cumulative in this process)"
    stats = d.memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**20, "jax memory_stats peak_bytes_in_use (cumulative)"


def bench_jax(
    arch: str,
    variant: str,
    batch_size: int,
    dtype: str,
    *,
    steps: int,
    warmup: int,
    windows: int,
    peak_tflops: float | None = None,
    conv_lowering: str = "auto",
    batch_norm: str = models.DEFAULT_BATCH_NORM,
    dataset_size: int | None = None,
    profile_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Two records for the real jitted train step: augmented batches gathered from a device-resident dataset,
    and one fixed device batch (no gather, no augmentation); eval throughput on the same batch size."""
    from flax_resnet import config as config_lib
    from flax_resnet import train

    config = config_lib.make_config("article", arch=arch, variant=variant, batch_size=batch_size, dtype=dtype)
    model = models.create_model(
        arch, variant, dtype=dtype, conv_lowering=conv_lowering, batch_norm=batch_norm  # type: ignore[arg-type]
    )
    tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
    graphdef, state0 = train.init_state(model, tx)
    n = dataset_size or max(4 * batch_size, 512)
    images_np, labels_np = _synthetic(batch_size, n)
    images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)
    device = jax_device_name()
    records = []

    order_np = np.random.default_rng(1).integers(0, n, (steps * (windows + warmup) + 1, batch_size), dtype=np.int32)
    packing = StatePacking(state0)
    loop_step = train.make_loop_step(train.make_train_step(graphdef, tx, config, augment=True), len(order_np), packing)
    fixed_step = train.make_train_step(graphdef, tx, config, augment=False)
    fixed_batch = {"image": images[:batch_size], "label": labels[:batch_size]}
    eval_fn = train.make_eval_fn(graphdef, packing)  # the trainer's eval call

    key = jax.random.key(0)
    mesh = make_mesh(jax.devices()[:1])  # one device, like the rest of the benchmark
    order = put_batch(order_np, mesh, axis=1)

    # --- the input work alone (row pick, gather, crop/flip, normalize), to say what the step pays for it
    @jax.jit
    def input_only(i):
        idx = order[i % len(order_np)]
        return data_lib.normalize(data_lib.augment(jax.random.fold_in(key, i), images[idx]))

    input_counter = [0]

    def run_input():
        input_counter[0] += 1
        return input_only(np.int32(input_counter[0]))

    input_times = time_windows(run_input, jax.block_until_ready, warmup, windows, steps)
    input_ms = 1000 * statistics.median(input_times) / steps

    # --- augmented: exactly the trainer's per-step call (row of the epoch's device-resident index array and
    # rng derived from state.step on the device, gather + crop/flip/normalize + step, running sums on device)
    packed = packing.pack_jit(jax.tree.map(jnp.copy, state0))
    sums = jax.tree.map(jnp.asarray, train.loop_sums())
    start = time.perf_counter()
    compiled = loop_step.lower(packed, sums, images, labels, order, key).compile()
    compile_aug = time.perf_counter() - start

    def run_gathered():
        nonlocal packed, sums
        packed, sums = compiled(packed, sums, images, labels, order, key)
        return sums["loss"]

    # --- one fixed batch already on the device: the step without the input pipeline
    state = jax.tree.map(jnp.copy, state0)
    start = time.perf_counter()
    fixed_compiled = fixed_step.lower(state, fixed_batch, key).compile()
    compile_fixed = time.perf_counter() - start

    def run_fixed():
        nonlocal state
        state, metrics = fixed_compiled(state, fixed_batch, key)
        return metrics["loss"]

    # the two timed in turn, window by window, so their ratio (the input pipeline's cost) is paired
    timed_aug, aug_seconds = call_timer(run_gathered)
    timed_fixed, fixed_seconds = call_timer(run_fixed)
    aug_times, fixed_times = time_windows_alternating(
        [timed_aug, timed_fixed], jax.block_until_ready, warmup, windows, steps
    )
    eval_idx = put_batch(np.arange(batch_size, dtype=np.int32), mesh)
    eval_mask = put_batch(np.ones((batch_size,), np.float32), mesh)
    eval_compiled = eval_fn.lower(packed, images, labels, eval_idx, eval_mask).compile()
    eval_times = time_windows(
        lambda: eval_compiled(packed, images, labels, eval_idx, eval_mask)["loss_sum"],
        jax.block_until_ready, warmup, windows, steps,
    )
    mem, source = _jax_memory()  # both steps' memory: they were live together
    augmented = _record("jax", "jit", dtype, arch, variant, batch_size, device, "augmented", aug_times, eval_times,
                        steps, compile_aug, mem, source, peak_tflops)
    # an upper bound: one small program per call, so on a GPU this includes its launch cost
    augmented["input_ms_per_step"] = input_ms
    augmented["host_ms_per_call"] = 1000 * statistics.median(aug_seconds[warmup:])
    augmented["state_arrays"] = len(packing)
    # window i of each was timed back to back: time fixed / time augmented = throughput augmented / fixed
    augmented["augmented_over_fixed_windows"] = [f / a for a, f in zip(aug_times, fixed_times, strict=True)]
    if profile_dir:
        augmented["profile"] = profiling.profile_jax(run_gathered, steps, Path(profile_dir) / f"jax_{dtype}")
    fixed = _record("jax", "jit", dtype, arch, variant, batch_size, device, "fixed", fixed_times, eval_times, steps,
                    compile_fixed, mem, source, peak_tflops)
    fixed["host_ms_per_call"] = 1000 * statistics.median(fixed_seconds[warmup:])
    fixed["state_arrays"] = len(jax.tree.leaves(state0))
    records += [augmented, fixed]
    for r in records:  # the model options the JAX numbers were measured with
        r.update(conv_lowering=conv_lowering, batch_norm=batch_norm)
    return records


# -------------------------------------------------------------------------------------------- torch


class TorchStep(NamedTuple):
    """make_torch_step's result: no-argument train step and eval forward (compiled for mode "compile")."""

    train_step: Callable[[], Any]
    eval_forward: Callable[[], Any]
    model: Any
    sync: Callable[..., None]
    cuda: bool


def make_torch_step(arch: str, variant: str, batch_size: int, mode: str, dtype: str) -> TorchStep:
    """The torch_ref model with torch.optim.SGD (article settings) on one fixed normalized batch.

    `mode` is "eager" or "compile" (torch.compile); dtype "bfloat16" means AMP autocast + channels_last (GPU).
    """
    import torch

    from flax_resnet import config as config_lib
    from torch_ref import models as torch_models

    if mode not in ("eager", "compile"):
        raise ValueError(f"torch mode must be eager or compile, got {mode!r}")
    cuda = torch.cuda.is_available()
    if dtype == "bfloat16" and not cuda:
        raise ValueError("torch bfloat16 (AMP + channels_last) is measured on GPU only")
    dev = torch.device("cuda" if cuda else "cpu")
    config = config_lib.make_config("article", arch=arch, variant=variant, batch_size=batch_size)
    torch.manual_seed(0)
    model = torch_models.create_model(arch, variant).to(dev)
    memory_format = torch.channels_last if dtype == "bfloat16" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    images_np, labels_np = _synthetic(batch_size, batch_size)
    from flax_resnet.data import CIFAR10_MEAN, CIFAR10_STD

    x = (images_np.astype(np.float32) / 255 - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev).contiguous(memory_format=memory_format)
    y_t = torch.from_numpy(labels_np.astype(np.int64)).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x_t), y_t)
        loss.backward()
        opt.step()
        return loss

    def eval_forward():
        with torch.no_grad(), autocast:
            return model(x_t)

    def sync(_=None):
        if cuda:
            torch.cuda.synchronize()

    if mode == "compile":
        return TorchStep(torch.compile(train_step), torch.compile(eval_forward), model, sync, cuda)
    return TorchStep(train_step, eval_forward, model, sync, cuda)


def bench_torch(
    arch: str,
    variant: str,
    batch_size: int,
    mode: str,
    dtype: str,
    *,
    steps: int,
    warmup: int,
    windows: int,
    peak_tflops: float | None = None,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    """Time make_torch_step's train step and eval forward: windows after warm-up, compile time, peak memory."""
    import torch

    train_step, eval_forward_c, model, sync, cuda = make_torch_step(arch, variant, batch_size, mode, dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    def first_call(fn) -> float:
        start = time.perf_counter()
        fn()
        sync(None)
        return time.perf_counter() - start

    model.train()
    first = first_call(train_step)
    train_times = time_windows(train_step, sync, warmup, windows, steps)
    model.eval()
    eval_first = first_call(eval_forward_c)
    eval_times = time_windows(eval_forward_c, sync, warmup, windows, steps)
    model.train()
    median_step = statistics.median(train_times) / steps
    median_eval = statistics.median(eval_times) / steps
    # Eager has nothing to compile; for torch.compile the first calls minus one steady-state call.
    compile_s = 0.0 if mode == "eager" else max(0.0, first - median_step) + max(0.0, eval_first - median_eval)
    if cuda:
        mem, source = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        device = f"cuda ({torch.cuda.get_device_name()})"
    else:
        mem, source = cpu_peak_rss_mb(), "process maxrss (cumulative in this process)"
        device = f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    record = _record("torch", mode, dtype, arch, variant, batch_size, device, "fixed", train_times, eval_times, steps,
                     compile_s, mem, source, peak_tflops)
    if profile_dir:
        record["profile"] = profiling.profile_torch(train_step, steps, profile_dir, f"torch_{mode}_{dtype}")
    return record


# ---------------------------------------------------------------------------------------------- run


def run_benchmark(
    arch: str,
    variant: str,
    batch_size: int,
    *,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    frameworks: Sequence[str] = FRAMEWORKS,
    modes: Sequence[str] = ("jit", "eager", "compile"),
    steps: int = 10,
    warmup: int = 2,
    windows: int = 5,
    peak_tflops: float | None = None,
    conv_lowering: str = "auto",
    batch_norm: str = models.DEFAULT_BATCH_NORM,
    profile_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every requested (framework, mode, dtype) combination on the same model, batch and device."""
    for name, given, valid in (("framework", frameworks, FRAMEWORKS), ("mode", modes, MODES),
                               ("dtype", dtypes, DTYPES)):
        bad = [g for g in given if g not in valid]
        if bad:
            raise ValueError(f"unknown {name} {bad[0]!r}; valid choices: {', '.join(valid)}")
    models.check_names(arch, variant)
    if steps < 1 or windows < 1 or warmup < 1 or batch_size < 2:  # warmup: the first call of each step compiles
        raise ValueError("need --steps >= 1, --windows >= 1, --warmup >= 1 and --batch-size >= 2")
    dtypes, frameworks, modes = (list(dict.fromkeys(v)) for v in (dtypes, frameworks, modes))  # each once
    jax_plan = [("jit", dtype) for dtype in dtypes if "jax" in frameworks and "jit" in modes]
    torch_plan = [(m, d) for m in ("eager", "compile") if "torch" in frameworks and m in modes for d in dtypes]

    def torch_runnable(plan: list[tuple[str, str]]) -> list[tuple[str, str]]:
        import torch  # only here: imported before the JAX measurement it could disturb its timings

        return [(m, d) for m, d in plan if d != "bfloat16" or torch.cuda.is_available()]  # CPU bf16: no baseline

    requested = torch_plan
    if not jax_plan:
        torch_plan = torch_runnable(torch_plan)
    if not jax_plan and not torch_plan:  # an empty table with exit 0 would look like a result
        raise ValueError(
            f"nothing to measure for frameworks {','.join(frameworks) or '-'}, modes {','.join(modes) or '-'}, "
            f"dtypes {','.join(dtypes) or '-'}: jax runs mode jit, torch runs eager and compile, and torch "
            "bfloat16 only on a GPU"
        )
    kw = dict(steps=steps, warmup=warmup, windows=windows, peak_tflops=peak_tflops, profile_dir=profile_dir)
    started = run_context(steps, warmup, windows)
    if started["load_average_before"][0] > 0.5 * started["cpu_count"] and log:
        log(f"warning: load average {started['load_average_before'][0]:.1f} on {started['cpu_count']} CPUs: other "
            "work is running, so the rates come out low and uneven (torch on the CPU far more than JAX)")
    records: list[dict[str, Any]] = []
    for _, dtype in jax_plan:
        if log:
            log(f"jax jit {dtype} ...")
        records += bench_jax(arch, variant, batch_size, dtype, conv_lowering=conv_lowering, batch_norm=batch_norm, **kw)
    runnable = torch_runnable(torch_plan) if torch_plan else []
    skipped = [f"torch {m} {d}" for m, d in requested if (m, d) not in runnable]
    if skipped and log:  # said, or the table's missing rows would look like an oversight
        log(f"not measured: {', '.join(skipped)} (torch bfloat16 runs on a GPU only here)")
    for mode, dtype in runnable:
        if log:
            log(f"torch {mode} {dtype} ...")
        records.append(bench_torch(arch, variant, batch_size, mode, dtype, **kw))
    context = {**started, "load_average_after": list(os.getloadavg()), "versions": _versions()}
    return [{**r, **context} for r in records]


def run_context(steps: int, warmup: int, windows: int) -> dict[str, Any]:
    """What a record needs to be checked later: when, the counts it was timed with, the code, the machine's load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": steps,
        "warmup": warmup,
        "windows": windows,
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count() or 1,
        "load_average_before": list(os.getloadavg()),
    }


def _git_commit() -> str | None:
    """The checkout's commit (with "+changes" when its tracked files differ from it); None outside a git clone."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.returncode == 1 else "")


def _versions() -> dict[str, str]:
    """Versions of the libraries that computed the records (torch only where a torch run imported it)."""
    import flax
    import optax

    versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                "optax": optax.__version__}  # fmt: skip
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    return versions


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, plus the headline ratios JAX / torch eager and augmented / fixed input."""
    head = f"{'framework':9} {'mode':7} {'dtype':8} {'input':9} {'train img/s':>11} {'eval img/s':>10} " \
           f"{'compile s':>9} {'TFLOP/s':>8} {'of peak':>7} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in records:
        frac = f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] is not None else "-"
        ev = f"{r['eval_images_per_second']:.1f}" if r["eval_images_per_second"] is not None else "-"
        lines.append(
            f"{r['framework']:9} {r['mode']:7} {r['dtype']:8} {r['input']:9} {r['train_images_per_second']:11.1f} "
            f"{ev:>10} {r['compile_seconds']:9.2f} {r['achieved_tflops']:8.4f} {frac:>7} {r['peak_memory_mb']:8.0f}"
        )
    if records:
        on = records[0].get("malloc_hugepages")
        pages = records[0].get("malloc_pages", "transparent huge pages" if on else "4 KiB pages")
        lines.append(f"host malloc: {pages} (flax_resnet/hugepages.py)")
        lines.append("compile s: jax, the train step's ahead-of-time compile; torch compile, its first train and eval "
                     "calls less a median step of each (a recompile in the warm-up not counted); not comparable")
    torch_runs = [r for r in records if r["framework"] == "torch"]
    for r in records:
        for t in torch_runs:
            if r["framework"] == "jax" and t["dtype"] == r["dtype"]:
                lines.append(
                    f"ratio jax {r['dtype']} ({r['input']}) / torch {t['mode']} {t['dtype']}: "
                    f"{r['train_images_per_second'] / t['train_images_per_second']:.3f} train, "
                    f"{r['eval_images_per_second'] / t['eval_images_per_second']:.3f} eval"
                )
    by_dtype: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r["framework"] == "jax":
            by_dtype.setdefault(r["dtype"], {})[r["input"]] = r
    for dtype, pair in by_dtype.items():
        if "augmented" in pair and "fixed" in pair:
            paired = pair["augmented"]["augmented_over_fixed_windows"]
            lines.append(
                f"input pipeline jax {dtype}: augmented / fixed batch = {statistics.median(paired):.3f} (median of "
                f"{len(paired)} paired windows, {min(paired):.3f}-{max(paired):.3f}; goal >= 0.97)"
            )
            step_ms = 1000 * pair["augmented"]["batch_size"] / pair["augmented"]["train_images_per_second"]
            lines.append(f"input work alone: {pair['augmented']['input_ms_per_step']:.3f} ms per step "
                         f"(step with it: {step_ms:.3f} ms)")
            aug, fixed = pair["augmented"], pair["fixed"]
            lines.append(
                f"host time per call jax {dtype}: {aug['host_ms_per_call']:.3f} ms (trainer's call, state packed as "
                f"{aug['state_arrays']} arrays), {fixed['host_ms_per_call']:.3f} ms (train step, TrainState pytree of "
                f"{fixed['state_arrays']} arrays)"
            )
    for r in records:
        if "profile" in r:
            lines.append(profiling.format_profile(f"{r['framework']} {r['mode']} {r['dtype']} ({r['input']})",
                                                  r["profile"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ conv shapes


def conv_shapes(arch: str, variants: Sequence[str] = ("cifar", "imagenet"), image_size: int = 32) -> dict:
    """Distinct conv shapes (h, w, cin, cout, k, stride) of `arch` -> {variant: number of layers with it}."""
    shapes: dict[tuple[int, ...], dict[str, int]] = {}
    for variant in variants:
        for layer in model_layers(arch, variant, image_size):
            if layer.kind == "conv":
                key = (layer.h, layer.w, layer.cin, layer.cout, layer.k, layer.stride)
                shapes.setdefault(key, {}).setdefault(variant, 0)
                shapes[key][variant] += 1
    return shapes


def conv_shape_times(
    shape: tuple[int, ...], batch_size: int, repeats: int, lowerings: Sequence[str] = ("xla", "matmul", "mixed")
) -> dict[str, float]:
    """Median seconds of forward + both gradients of one conv, per JAX lowering and for torch, interleaved."""
    import torch

    from flax_resnet.conv import conv2d

    h, w, cin, cout, k, stride = shape
    p = k // 2
    padding = ((p, p), (p, p))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, h, w, cin), dtype=np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.05).astype(np.float32)
    ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    g = rng.standard_normal((batch_size, ho, wo, cout), dtype=np.float32)
    xj, kj, gj = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(g)
    runs: dict[str, Callable[[], Any]] = {}
    for lowering in lowerings:

        def fwd_bwd(x, kernel, g, lowering=lowering):
            y, vjp = jax.vjp(lambda a, b: conv2d(a, b, stride, padding, lowering), x, kernel)  # type: ignore[arg-type]
            return (y, *vjp(g))

        fn = jax.jit(fwd_bwd)
        jax.block_until_ready(fn(xj, kj, gj))
        runs[lowering] = lambda fn=fn: jax.block_until_ready(fn(xj, kj, gj))
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    wt = torch.tensor(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), requires_grad=True)
    gt = torch.tensor(np.ascontiguousarray(g.transpose(0, 3, 1, 2)))

    def torch_run():
        xt.grad = wt.grad = None
        torch.nn.functional.conv2d(xt, wt, stride=stride, padding=p).backward(gt)

    torch_run()
    runs["torch"] = torch_run
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def conv_shape_report(
    arch: str = "resnet18", *, batch_size: int = 128, repeats: int = 5, log: Callable[[str], None] | None = None,
    out: str = "results/conv_shapes.md",
) -> str:
    """Markdown table of per-shape conv timings (both stems at 32x32) with the lowering `choose_lowering` picks."""
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"need --batch-size >= 1 and --conv-repeats >= 1, got {batch_size} and {repeats}")
    if jax.default_backend() != "cpu":  # torch's tensors stay on the CPU: the speedup column would mean nothing
        raise ValueError(f"--conv-table times the CPU's lowerings, and JAX is on {jax.default_backend()}: run it "
                         "with JAX_PLATFORMS=cpu")  # fmt: skip
    import torch

    from flax_resnet.conv import choose_lowering, lowering_applies

    lowerings = ("xla", "matmul", "mixed", "chunked", "winograd", "dense")
    load_before = os.getloadavg()
    rows = []
    totals = {v: {name: 0.0 for name in (*lowerings, "torch", "chosen")} for v in ("cifar", "imagenet")}
    for shape, counts in conv_shapes(arch).items():
        h, w, cin, cout, k, stride = shape
        p = k // 2
        x_shape, k_shape, padding = (batch_size, h, w, cin), (k, k, cin, cout), ((p, p), (p, p))
        usable = [lo for lo in lowerings if lowering_applies(lo, x_shape, k_shape, stride, padding)]
        t = conv_shape_times(shape, batch_size, repeats, usable)
        chosen = choose_lowering(x_shape, k_shape, stride, padding)
        best = min(usable, key=lambda name: t[name])
        for variant, count in counts.items():
            for name in (*lowerings, "torch"):
                # a lowering that does not apply to a shape counts that shape at chunked's time in its total
                totals[variant][name] += count * t.get(name, t["chunked"])
            totals[variant]["chosen"] += count * t[chosen]
        used = ", ".join(f"{v} x{c}" for v, c in counts.items())
        row = (
            f"| {h}x{w} | {cin}->{cout} | {k}x{k}/{stride} | {used} | "
            + " | ".join(f"{t[name] * 1e3:.1f}" if name in t else "-" for name in (*lowerings, "torch"))
            + f" | {best} | {chosen} | {t['torch'] / t[chosen]:.2f} |"
        )
        rows.append(row)
        if log:
            log(row)
    load_after = os.getloadavg()
    header = (
        f"# Per-shape convolution timings, {arch}, batch {batch_size}, 32x32 inputs\n\n"
        f"Forward + input gradient + kernel gradient of one convolution (fp32), median of {repeats} interleaved "
        f"repeats (JAX lowerings and torch eager in the same process, one after another).\n\n"
        f"- command: `python scripts/benchmark.py --arch {arch} --batch-size {batch_size} "
        f"--conv-repeats {repeats} --conv-table {out}`\n"
        f"- machine: {cpu_model()}, {platform.machine()} ({os.cpu_count()} CPUs), jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)\n"
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {'/'.join(f'{v:.2f}' for v in load_after)}\n\n"
        "Lowerings: `xla` = lax.conv_general_dilated (forward and both gradients); `matmul` = patches + one "
        "matmul (gradients by autodiff of that); `mixed` = XLA convolution forward and input gradient, "
        "patches-matmul kernel gradient (custom VJP); `chunked` = patches + matmul a few images at a time "
        "(lax.scan over the batch; both gradients chunked the same way); `winograd` = Winograd F(2x2, 3x3) a few "
        "images at a time (3x3 stride-1 convs padded by 1 on even maps only); `dense` = one matmul by a block "
        "matrix of the kernel's taps (only where every output pixel sees the whole input map: 1x1 maps, 2x2 under "
        "a 3x3 kernel). `-` where a lowering does not apply; its column total counts those shapes at chunked's "
        "time. Times in ms; `speedup` = torch / chosen.\n\n"
        f"| map | channels | kernel/stride | layers | {' | '.join(lowerings)} | torch | fastest | chosen | speedup |\n"
        f"|{'---|' * (len(lowerings) + 8)}\n"
    )
    summary = ["", "Sum over the network's conv layers (ms per training step, convolutions only):", ""]
    summary.append(f"| variant | {' | '.join(lowerings)} | torch | chosen |")
    summary.append(f"|{'---|' * (len(lowerings) + 3)}")
    for variant, tot in totals.items():
        summary.append(
            f"| {variant} | " + " | ".join(f"{tot[n] * 1e3:.0f}" for n in (*lowerings, "torch", "chosen")) + " |"
        )
    return header + "\n".join(rows) + "\n" + "\n".join(summary) + "\n"
