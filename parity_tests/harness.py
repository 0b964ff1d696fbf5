"""Cross-framework comparisons used by the parity tests (their table: `scripts/parity_report.py`).

Each `check_*` function builds its inputs, runs torch_ref and flax_resnet on the same weights and data,
and returns the largest measured difference (compared in float64 on the host), so the README table and
the test assertions come from the same code. Torch is the reference side of every relative measure.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

import flax_resnet
import torch_ref
from flax_resnet import train as train_lib
from flax_resnet.config import Config, make_config
from flax_resnet.data import normalize

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VARIANTS: tuple[str, ...] = ("cifar", "imagenet", "article")
PAIRS: tuple[tuple[str, str], ...] = tuple((a, v) for a in ARCHS for v in VARIANTS)

# Tolerances, exactly as the issue states them.
TOL_EVAL = 1e-4  # max|dlogits| <= TOL_EVAL * max(1, max|logits|)
TOL_TRAIN = 1e-5  # train-mode logits and BN running statistics, relative
TOL_GRAD = 1e-4  # relative L2 error of every parameter's gradient
TOL_OPT = 1e-5  # parameters after 5 optimizer steps, relative
TOL_TRAJ_LOSS = 1e-3  # per-step loss, absolute
TOL_TRAJ_PARAM = 1e-3  # final parameters after 20 steps, relative
TOL_STD = 0.10  # per-layer init std, relative

# Published parameter counts (the source article's table; README "Variants and parameter counts").
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "cifar": dict(
        resnet18=11_173_962, resnet34=21_282_122, resnet50=23_520_842, resnet101=42_512_970, resnet152=58_156_618
    ),
    "imagenet": dict(
        resnet18=11_689_512, resnet34=21_797_672, resnet50=25_557_032, resnet101=44_549_160, resnet152=60_192_808
    ),
    "article": dict(
        resnet18=11_189_706, resnet34=21_301_578, resnet50=25_557_032, resnet101=44_549_160, resnet152=60_192_808
    ),
}


def count_classes(arch: str, variant: str) -> int:
    """Classes behind the published count: 10 for cifar and article 18/34, 1000 otherwise."""
    if variant == "cifar" or (variant == "article" and arch in ("resnet18", "resnet34")):
        return 10
    return 1000


def eval_sizes(arch: str, variant: str) -> tuple[int, ...]:
    """Input sides for the eval-mode logits check (32 only for article; 224 for imagenet 18/50)."""
    if variant == "article":
        return (32,)
    if variant == "imagenet" and arch in ("resnet18", "resnet50"):
        return (32, 33, 64, 224)
    return (32, 33, 64)


EVAL_BATCHES: tuple[int, ...] = (1, 4)


def train_batch(variant: str) -> int:
    """Batch of 32x32 images for the train-mode checks: at least 16 values per channel in every BatchNorm.

    The imagenet/article stems leave a 1x1 map in stage 4, so train-mode BN there normalizes over the batch
    alone; with 4 values torch's own fp32 logits deviate from its float64 result by 1.5e-5 (measured,
    resnet18/article), above the 1e-5 bound, so those variants use 16 images. cifar keeps a 4x4 map: 4 images.
    """
    return 4 if variant == "cifar" else 16
# Architectures of the 20-step trajectory check (cifar variant), as the issue lists them.
TRAJ_ARCHS: tuple[str, ...] = ("resnet18", "resnet50")


def configure() -> None:
    """fp32 everywhere: highest matmul precision in JAX, no TF32 in torch (matters on GPUs only)."""
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# ----------------------------------------------------------------------------------------------------------------
# Measures (float64 on the host; `ref` is torch)


def f64(x: Any) -> np.ndarray:
    """Any array (torch, jax, numpy) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def max_rel(a: Any, ref: Any, floor: float = 0.0) -> float:
    """max|a - ref| / max(floor, max|ref|): the max-norm error relative to the reference's scale."""
    a, ref = f64(a), f64(ref)
    if a.shape != ref.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {ref.shape}")
    scale = max(floor, float(np.max(np.abs(ref))) if ref.size else 0.0)
    err = float(np.max(np.abs(a - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def rel_l2(a: Any, ref: Any) -> float:
    """||a - ref||_2 / ||ref||_2 (relative L2 error)."""
    a, ref = f64(a), f64(ref)
    if a.shape != ref.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {ref.shape}")
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as a contiguous NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------------------------------------------
# Models


def randomize_batchnorm(tmodel: nn.Module, seed: int) -> None:
    """Random BN weight/bias and running statistics (scaled to the real activations) in a torch model.

    The running statistics start from the batch statistics of one train-mode pass (so activations stay
    O(1) through 150 layers instead of exploding), then each channel's variance is scaled by U(0.5, 2),
    its mean shifted by N(0, 0.2 sd), and num_batches_tracked set to a random count. Leaves eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in tmodel.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.2, generator=g)
            m.momentum = 1.0
        tmodel.train()
        tmodel(torch.randn(8, 3, 32, 32, generator=g))
        for m in bns:
            m.momentum = 0.1
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=g))
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.2 * m.running_var.sqrt())
            m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    tmodel.eval()


def torch_model(arch: str, variant: str, num_classes: int = 10, seed: int = 0, randomize_bn: bool = True) -> nn.Module:
    """A torch_ref model with seeded random weights (and randomized BatchNorm unless told otherwise)."""
    torch.manual_seed(seed)
    tmodel = torch_ref.create_model(arch, variant, num_classes)
    if randomize_bn:
        randomize_batchnorm(tmodel, seed + 1)
    return tmodel.eval()


def flax_from_torch(tmodel: nn.Module, dtype: str = "float32") -> flax_resnet.ResNet:
    """A Flax model holding `tmodel`'s weights, via the product's `load_torch_state_dict`.

    `dtype="float64"` (call under `float64_jax`) computes in float64 and also stores every floating variable
    in float64, so gradients are float64 too; the load itself casts on the host. The model is built from a
    cached abstract graph (nothing is initialized or compiled) and starts in train mode, like `create_model`'s.
    """
    if dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise RuntimeError("a float64 model needs float64_jax()")
    graphdef, shapes = _abstract_model(tmodel.arch, tmodel.variant, tmodel.fc.out_features, dtype)
    # NaN placeholders, made on the host (no per-shape compile): anything the load failed to set would
    # poison every comparison.
    fmodel = nnx.merge(graphdef, jax.tree.map(_placeholder, shapes))
    flax_resnet.load_torch_state_dict(fmodel, tmodel.state_dict())
    return fmodel


@functools.lru_cache(maxsize=8)
def _abstract_model(arch: str, variant: str, num_classes: int, dtype: str) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and variable shapes of a model, traced abstractly (float64 models store float64 variables)."""
    return nnx.split(nnx.eval_shape(lambda: flax_resnet.create_model(arch, variant, num_classes, dtype=dtype)))


def _placeholder(s: jax.ShapeDtypeStruct) -> jax.Array:
    return jax.device_put(np.full(s.shape, np.nan if np.issubdtype(s.dtype, np.floating) else -1, s.dtype))


@functools.lru_cache(maxsize=2)
def pair(arch: str, variant: str) -> tuple[flax_resnet.ResNet, nn.Module]:
    """The cached (flax, torch) pair for one architecture: 10 classes, random weights and BN statistics.

    Callers must not mutate them; checks that train work on copies.
    """
    tmodel = torch_model(arch, variant, 10, seed=10 * PAIRS.index((arch, variant)))
    return flax_from_torch(tmodel), tmodel


@functools.lru_cache(maxsize=2)
def pair_float64(arch: str, variant: str) -> flax_resnet.ResNet:
    """`pair`'s Flax model in float64 (cached; callers must not mutate it). Call under `float64_jax`."""
    return flax_from_torch(pair(arch, variant)[1], "float64")


def images(seed: int, batch: int, size: int) -> np.ndarray:
    """Standard-normal NHWC float32 images."""
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Checks


def check_param_count(arch: str, variant: str) -> tuple[int, int, int]:
    """(flax count, torch_ref count, published count) with the published number of classes."""
    n = count_classes(arch, variant)
    with torch.device("meta"):
        tmodel = torch_ref.create_model(arch, variant, n)
    torch_count = sum(p.numel() for p in tmodel.parameters())
    fmodel = nnx.eval_shape(lambda: flax_resnet.create_model(arch, variant, n))
    return flax_resnet.count_params(fmodel), torch_count, PUBLISHED_COUNTS[variant][arch]


def check_stage_shapes(arch: str, variant: str, size: int, batch: int = 1) -> tuple[list, list]:
    """(flax stage shapes as NCHW, torch stage shapes) of stem + 4 stages for one input size."""
    fmodel, tmodel = pair(arch, variant)
    x = images(size, batch, size)
    view = nnx.view(fmodel, use_running_average=True)
    graphdef, state = nnx.split(view)
    fshapes = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s).stages(v), state, jnp.asarray(x))
    with torch.no_grad():
        tshapes = [tuple(t.shape) for t in tmodel.eval().stages(nchw(x))]
    return [(s.shape[0], s.shape[3], s.shape[1], s.shape[2]) for s in fshapes], tshapes


def check_eval_logits(arch: str, variant: str, size: int, batch: int) -> float:
    """Eval-mode logits in float64 on both sides: max|dlogits| / max(1, max|logits|).

    float64 because in float32 the rounding of 100-150 layers alone reaches the bound (1.2e-4 measured on
    resnet101/152 article), so fp32 would compare rounding, not the implementations.
    """
    _, tpair = pair(arch, variant)
    x = images(1000 * size + batch, batch, size)
    tmodel = copy.deepcopy(tpair).eval().double()
    with torch.no_grad():
        ref = tmodel(nchw(x).double())
    with float64_jax(), jit_per_block():
        out = flax_resnet.predict(pair_float64(arch, variant), jnp.asarray(x, jnp.float64), jit=False)
    return max_rel(out, ref, floor=1.0)


def _bn_stats(tmodel: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tmodel.state_dict().items() if k.endswith(("running_mean", "running_var"))}


@dataclass
class TrainForward:
    """Largest relative differences of the train-mode forward check."""

    logits: float  # over the 3 steps, max|d| / max(1, max|logits|)
    bn_after_1: float  # over all running means/vars after 1 update, max|d| / max|ref| per tensor
    bn_after_3: float
    num_batches_tracked_ok: bool


def check_train_forward(arch: str, variant: str, steps: int = 3) -> TrainForward:
    """Train-mode forward on `steps` batches, float64 on both sides: logits each step and BN running
    mean/var after 1 and 3 updates. (In float32 deep nets' train-mode rounding alone exceeds 1e-5:
    up to 1.2e-3 measured on resnet152.)"""
    _, tpair = pair(arch, variant)
    tmodel = copy.deepcopy(tpair).train()
    with float64_jax(), jit_per_block():
        fmodel = flax_from_torch(tmodel, "float64")
        tmodel.double()
        fmodel.train()
        logits, bn = 0.0, {}
        for k in range(steps):
            x = images(77 + k, train_batch(variant), 32)
            with torch.no_grad():
                ref = tmodel(nchw(x).double())
            out = fmodel(jnp.asarray(x, jnp.float64))
            logits = max(logits, max_rel(out, ref, floor=1.0))
            got = flax_resnet.to_torch_state_dict(fmodel, nnx.BatchStat)
            bn[k + 1] = max(max_rel(got[key], value) for key, value in _bn_stats(tmodel).items())
            nbt = {key: int(v) for key, v in tmodel.state_dict().items() if key.endswith("num_batches_tracked")}
            ok = all(int(got[key]) == v for key, v in nbt.items())
    return TrainForward(logits, bn[1], bn[min(3, steps)], ok)


@dataclass
class Gradients:
    """Float64 gradient comparison (strict bound on every parameter), with the fp32 error of torch for scale."""

    loss: float  # |dloss| (flax vs torch, both float64)
    worst: float  # max rel_l2(flax fp64, torch fp64) over all parameters (bound TOL_GRAD)
    worst_name: str
    compared: int  # parameters compared (all but the article zero-gradient biases)
    worst_fp32_floor: float  # max rel_l2(torch32, torch64) over all parameters
    zero_bias_ratio: float  # article: max ||grad bias|| / ||grad weight|| of the same conv, both frameworks


def _pre_bn_biases(tmodel: nn.Module) -> set[str]:
    """Conv biases directly followed by a BatchNorm: their exact train-mode gradient is 0."""
    return {name for name, _ in tmodel.named_parameters() if name.endswith("bias") and ".conv" in name}


def _torch_grads(tmodel: nn.Module, x: np.ndarray, labels: np.ndarray, dtype: torch.dtype, train: bool):
    tmodel = copy.deepcopy(tmodel).to(dtype).train(train)
    loss = F.cross_entropy(tmodel(nchw(x).to(dtype)), torch.from_numpy(labels).long())
    loss.backward()
    return float(loss.detach()), {name: p.grad for name, p in tmodel.named_parameters()}


def check_gradients(arch: str, variant: str, train: bool = True) -> Gradients:
    """Gradients of the mean cross-entropy (`train_batch` images of 32x32) for every parameter, in float64.

    Why float64: the float32 gradient of a freshly initialized ResNet is not determined to 1e-4 for most
    parameters (torch fp32 against torch fp64: up to ~3e-3 for resnet18 and ~1e-2 for resnet50 in train mode,
    measured; BatchNorm at init amplifies and cancels gradients), so an fp32 comparison at 1e-4 would test
    rounding, not the implementation. In float64 both frameworks must agree to 1e-4 on every parameter;
    the fp32 error of torch itself is recorded alongside to show the size of the fp32 rounding.
    `train`: BatchNorm on batch statistics, as in training.
    """
    _, tpair = pair(arch, variant)
    x = images(5, train_batch(variant), 32)
    labels = np.arange(len(x), dtype=np.int32) % 10
    _, t32 = _torch_grads(tpair, x, labels, torch.float32, train)
    tloss, t64 = _torch_grads(tpair, x, labels, torch.float64, train)
    with float64_jax():
        graphdef, params, rest = nnx.split(pair_float64(arch, variant), nnx.Param, ...)

        def loss_fn(p: nnx.State) -> jax.Array:
            model = nnx.merge(graphdef, p, rest, copy=True)
            model.train() if train else model.eval()
            logits = model(jnp.asarray(x, jnp.float64))
            return train_lib.cross_entropy(logits, jnp.asarray(labels)).mean()

        with jit_per_block():
            floss, fgrads = jax.value_and_grad(loss_fn)(params)
        # The converter's layout table is linear, so it maps gradients to torch names and layouts too.
        f64g = flax_resnet.to_torch_state_dict(nnx.merge(graphdef, fgrads, rest))
    zero_biases = _pre_bn_biases(tpair) if variant == "article" and train else set()
    r = Gradients(abs(float(floss) - tloss), 0.0, "", 0, 0.0, 0.0)
    for name, g64 in t64.items():
        if name not in zero_biases:  # an exact-zero gradient has no relative error to speak of
            r.worst_fp32_floor = max(r.worst_fp32_floor, rel_l2(t32[name], g64))
        if name in zero_biases:
            wname = name[: -len("bias")] + "weight"
            for g, gw in ((f64g[name], f64g[wname]), (t64[name], t64[wname])):
                r.zero_bias_ratio = max(r.zero_bias_ratio, float(np.linalg.norm(f64(g)) / np.linalg.norm(f64(gw))))
            continue
        err = rel_l2(f64g[name], g64)
        r.compared += 1
        if err >= r.worst:
            r.worst, r.worst_name = err, name
    return r


def check_optimizer(nesterov: bool, schedule: bool, steps: int = 5) -> float:
    """make_optimizer vs torch.optim.SGD(momentum 0.9, wd 5e-4) on fixed gradients: max relative param error.

    With `schedule`, the optax side uses train.make_schedule (piecewise, boundaries after steps 2 and 4)
    and the torch side sets the learning rate by hand before each step: 0.1, 0.1, 0.01, 0.01, 0.001.
    """
    rng = np.random.default_rng(11 + nesterov + 2 * schedule)
    shapes = {"conv": (3, 3, 4, 8), "fc": (8, 5), "bias": (5,)}
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]
    torch_lrs = [0.1, 0.1, 0.01, 0.01, 0.001] if schedule else [0.1] * steps
    if schedule:
        config = Config(lr=0.1, epochs=1, schedule="piecewise", piecewise_boundaries=(0.4, 0.8), piecewise_factor=0.1)
        lr: Any = train_lib.make_schedule(config, steps_per_epoch=steps)
    else:
        lr = 0.1
    tx = train_lib.make_optimizer(lr, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    opt_state = tx.init(params)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    topt = torch.optim.SGD(list(tparams.values()), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    for k in range(steps):
        g = {name: jnp.asarray(v) for name, v in grads[k].items()}
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        for group in topt.param_groups:
            group["lr"] = torch_lrs[k]
        for name, p in tparams.items():
            p.grad = torch.from_numpy(grads[k][name].copy())
        topt.step()
    return max(max_rel(params[k], tparams[k]) for k in shapes)


@dataclass
class Trajectory:
    """Largest differences over a short training run from the same weights on the same batches."""

    loss: float  # max over steps of |dloss|
    params: float  # max over parameter tensors of max|d| / max|ref| after the last step
    bn_stats: float  # same for BN running mean/var
    num_batches_tracked_ok: bool  # every BN counted each step, in both frameworks
    losses: list[float]  # torch's per-step losses, to show the run actually trains
    jax_losses: list[float]  # flax_resnet's per-step losses on the same batches


@contextlib.contextmanager
def float64_jax() -> Iterator[None]:
    """jax_enable_x64 for the duration (jit caches key on it), then the previous setting again."""
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@contextlib.contextmanager
def jit_per_block() -> Iterator[None]:
    """Run every residual block's own `__call__` as one compiled program (nnx.jit), the rest op by op.

    Same math, same product code; only the unit of compilation changes. A whole deep network compiled as
    one float64 program costs XLA:CPU 5-14 s per input shape (resnet152, measured), and op by op it compiles
    hundreds of small programs; per block, the identical blocks of a stage (and of resnet50/101/152, which
    share their block shapes) compile once per process. Measured on resnet152/cifar: gradient check 34 -> 23 s,
    train-mode forward 20 -> 10 s, and resnet101 after it 6 s and 5 s.
    """
    for cls, (_, jitted) in _BLOCK_CALLS.items():
        cls.__call__ = jitted
    try:
        yield
    finally:
        for cls, (call, _) in _BLOCK_CALLS.items():
            cls.__call__ = call


# Made once, so that the compiled blocks are reused by every check of the process.
_BLOCK_CALLS = {
    cls: (cls.__call__, nnx.jit(cls.__call__)) for cls in (flax_resnet.models.BasicBlock, flax_resnet.models.Bottleneck)
}



def _zero_init_residual(tmodel: nn.Module) -> None:
    """Zero the last BN scale of every residual branch (torchvision's `zero_init_residual=True`)."""
    with torch.no_grad():
        for block in tmodel.modules():
            if isinstance(block, torch_ref.models.Bottleneck):
                block.bn3.weight.zero_()
            elif isinstance(block, torch_ref.models.BasicBlock):
                block.bn2.weight.zero_()


def check_trajectory(
    arch: str, steps: int = 20, batch: int = 8, lr: float = 0.01, dtype: str = "float64", size: int = 16
) -> Trajectory:
    """flax_resnet.train's jitted step (augment off) with the trainer's own optimizer for the `default` recipe
    (`make_tx`: Nesterov momentum 0.9, weight decay 5e-4) and its label smoothing 0.1, vs a plain torch loop:
    torch.optim.SGD at the schedule's lr per step, F.cross_entropy with label_smoothing (cifar). Compared:
    losses, parameters, BatchNorm running statistics and batch counts. The schedule is the piecewise one (lr,
    then x0.1 at step 11 and 16 of 20): its values are the same float32 numbers inside the jitted step and
    outside it, where the one-cycle's interpolation rounds differently in the two (1 ulp of the lr; the
    schedules themselves are checked against torch's by `check_optimizer`).

    Why float64 on both sides by default: train-mode gradients of a freshly initialized ResNet are only
    determined to ~3e-3 relative in float32 (torch fp32 against torch fp64, measured: BatchNorm at init
    amplifies and cancels gradients), so two correct fp32 implementations drift apart by more than 1e-3
    within 20 steps (measured here: 9e-3 in loss). In float64 the test checks what it is for: that the
    step composes train-mode BN, loss, weight decay and momentum exactly as torch does, step after step.
    Why a learnable task: on pure-noise images with random labels (or at lr 0.1) training is chaotic;
    torch against itself with weights perturbed by 1e-9 drifts by 0.1-1 in loss within 20 steps.
    Why the residual branches start with a zero last-BN scale (the same weights on both sides, as
    torchvision's `zero_init_residual=True`): from the default init, resnet50 is chaotic at every lr tried
    (0.01 down to 3e-4, batch 8: a 1e-9 weight perturbation in torch alone jumps from 4e-8 to 2e-3 in loss
    within 4 steps, measured); with zero-init residuals the same perturbation stays ~1e-10 in loss and
    ~2e-8 in parameters over 20 steps at lr 0.01 while the loss falls (2.2 -> 0.6), so the comparison
    tests the implementations rather than the amplification of rounding.
    Why 16x16 images: the check is about composing the step, not the image size (the forward/gradient checks
    cover 32/33/64/224), and float64 on both sides costs a quarter of 32x32's time; at 16x16 the same
    1e-9 perturbation stays below 1e-9 in loss over the 20 steps (resnet18 and resnet50, measured) while
    the loss falls (2.3 -> 0.7 and 2.1 -> 0.3).
    """
    with float64_jax() if dtype == "float64" else contextlib.nullcontext():
        tmodel = torch_model(arch, "cifar", 10, seed=3, randomize_bn=False).train()
        _zero_init_residual(tmodel)
        fmodel = flax_from_torch(tmodel, dtype)
        if dtype == "float64":
            tmodel.double()
        config = make_config("default", arch=arch, variant="cifar", lr=lr, epochs=1, dtype=dtype, schedule="piecewise")
        assert (config.nesterov, config.weight_decay, config.label_smoothing) == (True, 5e-4, 0.1)
        tx, schedule = train_lib.make_tx(config, steps_per_epoch=steps)
        graphdef, state = train_lib.init_state(fmodel, tx)
        step = train_lib.make_train_step(graphdef, tx, config, augment=False)
        topt = torch.optim.SGD(tmodel.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        rng = np.random.default_rng(21)
        labels = rng.integers(0, 10, (steps, batch)).astype(np.int32)
        prototypes = rng.integers(0, 256, (10, size, size, 3)).astype(np.float64)
        noise = rng.normal(0.0, 40.0, (steps, batch, size, size, 3))
        u8 = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        loss_diff, tlosses, flosses = 0.0, [], []
        for k in range(steps):
            batch_k = {"image": jnp.asarray(u8[k]), "label": jnp.asarray(labels[k])}
            state, metrics = step(state, batch_k, jax.random.key(k))
            # Bit-identical float32 inputs (normalize is the same to the bit in any program, and BN-bias
            # gradients at init are that sensitive), widened as the first conv does.
            x = nchw(np.asarray(normalize(batch_k["image"]))).to(next(tmodel.parameters()).dtype)
            topt.zero_grad()
            tloss = F.cross_entropy(tmodel(x), torch.from_numpy(labels[k]).long(), label_smoothing=0.1)
            tloss.backward()
            for group in topt.param_groups:
                group["lr"] = float(schedule(jnp.asarray(k, jnp.int32)))  # optax's count before update k: int32
            topt.step()
            tlosses.append(float(tloss.detach()))
            flosses.append(float(metrics["loss"]))
            loss_diff = max(loss_diff, abs(flosses[-1] - tlosses[-1]))
        got = flax_resnet.to_torch_state_dict(train_lib.merge_model(graphdef, state))
    tparams = dict(tmodel.named_parameters())
    pdiff = max(max_rel(got[k], p) for k, p in tparams.items())
    bdiff = max(max_rel(got[k], v) for k, v in _bn_stats(tmodel).items())
    counts = {k: int(v) for k, v in tmodel.state_dict().items() if k.endswith("num_batches_tracked")}
    counts_ok = all(int(got[k]) == v == steps for k, v in counts.items()) and bool(counts)
    return Trajectory(loss_diff, pdiff, bdiff, counts_ok, tlosses, flosses)


def check_roundtrip(arch: str, variant: str) -> list[str]:
    """torch -> Flax -> torch; returns every difference found (key set, dtype, shape, bits); [] if identical.

    The exported dict must also load strict into a fresh torch_ref model.
    """
    _, tmodel = pair(arch, variant)
    sd = tmodel.state_dict()
    back = flax_resnet.to_torch_state_dict(flax_from_torch(tmodel))
    problems = []
    if set(back) != set(sd):
        problems.append(f"key sets differ: {sorted(set(back) ^ set(sd))[:5]}")
    for key in sorted(set(back) & set(sd)):
        b, ref = torch.from_numpy(back[key]), sd[key]
        if b.dtype != ref.dtype or b.shape != ref.shape:
            problems.append(f"{key}: {b.dtype}{tuple(b.shape)} vs {ref.dtype}{tuple(ref.shape)}")
        elif not np.array_equal(back[key].reshape(-1).view(np.uint8), ref.numpy().reshape(-1).view(np.uint8)):
            problems.append(f"{key}: values differ bitwise")
    fresh = torch_ref.create_model(arch, variant, 10)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    return problems


def check_torchvision(arch: str, size: int = 64, batch: int = 4) -> float:
    """imagenet weights exported from Flax, loaded strict into torchvision's resnetN: eval logits measure."""
    import torchvision

    fmodel, _ = pair(arch, "imagenet")
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    exported = flax_resnet.to_torch_state_dict(fmodel)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    x = images(1000 * size + batch, batch, size)
    with torch.no_grad():
        ref = tv.eval()(nchw(x))
    with jit_per_block():
        return max_rel(flax_resnet.predict(fmodel, x, jit=False), ref, floor=1.0)


STD_MIN_ELEMENTS = 1024


@dataclass
class InitStd:
    """Per-layer init std comparison of fresh models."""

    worst: float  # max over included tensors of |std_flax / std_torch - 1|
    worst_name: str
    included: int
    excluded: list[str]
    bn_constant_ok: bool  # BN weight 1 and bias 0 in both


def check_init_std(arch: str, variant: str, seed: int = 0) -> InitStd:
    """Fresh create_model vs fresh torch_ref model: weight std per tensor with >= STD_MIN_ELEMENTS elements.

    Included: every conv kernel and the fc weight (all have >= 1728 elements, so the sample std's own
    relative noise is <= ~2.5%). Excluded: conv biases (article) and the fc bias (<= 512 elements; the
    sample std of 64 uniform draws varies by ~6%, too close to the 10% bound) and BatchNorm weight/bias,
    which are constants (1 and 0) and are checked for equality instead.
    """
    torch.manual_seed(seed)
    tsd = torch_ref.create_model(arch, variant, 10).state_dict()
    fsd = flax_resnet.to_torch_state_dict(flax_resnet.create_model(arch, variant, 10, seed=seed))
    bn_names = {k.rsplit(".", 1)[0] for k in tsd if k.endswith("running_mean")}
    worst, worst_name, included, excluded, bn_ok = 0.0, "", 0, [], True
    for key, tval in tsd.items():
        module, leaf = key.rsplit(".", 1)
        if leaf not in ("weight", "bias"):
            continue
        if module in bn_names:
            want = 1.0 if leaf == "weight" else 0.0
            bn_ok &= bool(np.all(fsd[key] == want) and torch.all(tval == want))
            continue
        if tval.numel() < STD_MIN_ELEMENTS:
            excluded.append(key)
            continue
        dev = abs(float(np.std(f64(fsd[key]))) / float(torch.std(tval.double(), unbiased=False)) - 1.0)
        included += 1
        if dev >= worst:
            worst, worst_name = dev, key
    return InitStd(worst, worst_name, included, excluded, bn_ok)
