"""Flax NNX ResNet-18/34/50/101/152 in three variants (cifar, imagenet, article).

Module names mirror torchvision's (`conv1`, `bn1`, `layerS[B].conv1`, `downsample[0|1]`, `fc`) so that
weight exchange is a table, and BatchNorm follows torch exactly (momentum 0.1, eps 1e-5, unbiased running
variance). Inputs are NHWC float; all padding is explicit and symmetric, as in torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from flax_resnet.conv import LOWERINGS, Lowering, conv2d, lowering_applies

ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
VARIANTS: tuple[str, ...] = ("cifar", "imagenet", "article")
WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
# float64 needs jax_enable_x64; the parity suite uses it where fp32 rounding would hide what is compared.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def check_names(arch: str, variant: str) -> None:
    """Raise ValueError naming the valid choices when `arch` or `variant` is unknown."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid choices: {', '.join(VARIANTS)}")


def _torch_uniform(bound: float) -> Callable[..., jax.Array]:
    """PyTorch's default init for Linear weights/biases and conv biases: U(-bound, bound)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Kaiming-normal, fan_out, ReLU gain (untruncated), as torchvision initializes convolutions.
_kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-2, out_axis=-1)


class Conv(nnx.Module):
    """Conv2d with symmetric explicit padding k//2 and an HWIO kernel; lowering chosen by `conv2d`."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        *,
        bias: bool = False,
        dtype: Any = jnp.float32,
        lowering: Lowering = "auto",
        rngs: nnx.Rngs,
    ):
        k = kernel_size
        self.kernel = nnx.Param(_kaiming_fan_out(rngs.params(), (k, k, cin, cout), jnp.float32))
        bound = 1.0 / math.sqrt(cin * k * k)
        self.bias = nnx.Param(_torch_uniform(bound)(rngs.params(), (cout,))) if bias else None
        self.stride = stride
        self.padding = ((k // 2, k // 2), (k // 2, k // 2))
        self.dtype = dtype
        self.lowering = lowering

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
        lowering = self.lowering
        if not lowering_applies(lowering, x.shape, kernel.shape, self.stride, self.padding):
            lowering = "auto"  # a model-wide "winograd" or "dense": that lowering wherever the geometry allows it
        y = conv2d(x, kernel, self.stride, self.padding, lowering)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


# How train-mode BatchNorm computes its statistics and gradient (same function, different memory passes):
#   autodiff  mean, then the mean square of the centred values (two passes over x); gradient by autodiff;
#   fused     the same forward; a hand-written backward: both per-channel sums of the gradient in one pass
#             over (dy, x), then dx in a second (autodiff's backward also reduces the centred values for the
#             mean's path through the variance);
#   onepass   `fused`, with the statistics in one pass: mean and mean square of x minus a shift, the batch
#             mean of the centre pixel of each map (a 1/(H*W) sample of x: one small extra reduction). Any
#             shift gives the same function; one near the batch mean keeps E[(x-s)^2] - E[x-s]^2 free of
#             cancellation (its relative rounding grows with 1 + (mean - s)^2 / var).
# On a GPU, BatchNorm is memory-bound and each pass over a ResNet-50's activations costs time: on an H200
# (resnet50 bf16 batch 512) fused trains 5.5% faster than autodiff (2026-11-28,
# results/gpu_2026-11-28_session2/bn_*.json) and onepass 2.5% faster than fused (23,711 vs 23,129 img/s,
# 2026-12-04, results/gpu_2026-12-04/); on the CPU all three tie. The first onepass shifted by the running
# mean, which is 0 at the first step and lags the batch mean for many more, so its variance lost up to
# log2(1 + mean^2/var) bits: a 1-vs-2-device difference 20x autodiff's after two steps of
# tests/test_sharding.py's problem. The centre-pixel shift brings it to autodiff's (1.3e-6 vs 1.4e-6;
# results/cpu_2026-11-28/bn_device_count/), and it is the default since it measured fastest on the GPU.
BATCH_NORMS: tuple[str, ...] = ("autodiff", "fused", "onepass")
DEFAULT_BATCH_NORM = "onepass"  # the models' and the benchmark's default; Config.batch_norm names it too


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, one_pass: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm over NHWC: `(y, batch mean, biased batch variance)`, statistics in at least
    float32, y in x's dtype; `one_pass` computes the statistics as `onepass` does (see BATCH_NORMS)."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon, one_pass)[0]


def _batch_stats(x32: jax.Array, one_pass: bool) -> tuple[jax.Array, jax.Array]:
    """Per-channel batch mean and biased variance of NHWC `x32`: two passes, or one pass about a shift."""
    axes = (0, 1, 2)
    if one_pass:
        shift = lax.stop_gradient(jnp.mean(x32[:, x32.shape[1] // 2, x32.shape[2] // 2, :], axis=0))
        xc = x32 - shift
        m1, m2 = jnp.mean(xc, axis=axes), jnp.mean(jnp.square(xc), axis=axes)
        return shift + m1, jnp.maximum(m2 - jnp.square(m1), 0.0)
    mean = jnp.mean(x32, axis=axes)
    return mean, jnp.mean(jnp.square(x32 - mean), axis=axes)


def _batch_norm_train_fwd(x, scale, bias, epsilon, one_pass):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _batch_stats(x32, one_pass)
    rstd = lax.rsqrt(var + epsilon)
    s = scale * rstd
    y = (x32 * s + (bias - mean * s)).astype(x.dtype)
    return (y, mean, var), (x, scale, mean, rstd)


def _batch_norm_train_bwd(epsilon, one_pass, residuals, cotangents):
    x, scale, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    n = x.shape[0] * x.shape[1] * x.shape[2]
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    xhat = (x32 - mean) * rstd
    dy32 = dy.astype(x32.dtype)
    sum_dy = jnp.sum(dy32, axis=(0, 1, 2))
    sum_dy_xhat = jnp.sum(dy32 * xhat, axis=(0, 1, 2))
    # d/dx of y = xhat * scale + bias, through xhat's own dependence on the batch mean and variance, plus the
    # (usually zero) cotangents of the returned statistics: d mean/dx = 1/n, d var/dx = 2 (x - mean) / n.
    dx = (scale * rstd / n) * (n * dy32 - sum_dy - xhat * sum_dy_xhat)
    dx = dx + dmean / n + dvar * (2.0 / n) * xhat / rstd
    return dx.astype(x.dtype), sum_dy_xhat.astype(scale.dtype), sum_dy.astype(scale.dtype)  # bias: scale's dtype


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nnx.Module):
    """BatchNorm over NHWC identical to torch.nn.BatchNorm2d, in at least float32 whatever the compute dtype.

    Train mode normalizes with the biased batch variance and updates the running variance with the
    unbiased one (as torch does); `num_batches_tracked` counts train-mode calls, as torch's buffer does.
    `impl` is one of BATCH_NORMS (same function; how the statistics and gradient are computed).
    """

    def __init__(
        self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5, impl: str = DEFAULT_BATCH_NORM
    ):
        if impl not in BATCH_NORMS:
            raise ValueError(f"unknown batch norm {impl!r}; valid choices: {', '.join(BATCH_NORMS)}")
        self.impl = impl
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = False

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Lets `nnx.view(model, use_running_average=...)` (and train()/eval()) switch modes.

        Args:
          use_running_average: normalize with the running statistics (eval mode) if True, with the batch's and
            update the running ones (train mode) if False; None leaves the mode as it is.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def _update_running(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        """torch's running-statistics update from a batch of n values per channel (unbiased variance)."""
        m = self.momentum
        # set_value, not `[...] =`: the indexed form probes each tracer's sharding, whose error message
        # costs ~10 ms per variable to build when traced (a third of a ResNet-50 train-step trace).
        self.mean.set_value((1 - m) * self.mean[...] + m * lax.stop_gradient(mean))
        self.var.set_value((1 - m) * self.var[...] + m * lax.stop_gradient(var) * (n / (n - 1)))
        self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        n = x.shape[0] * x.shape[1] * x.shape[2]
        if not self.use_running_average:
            if n < 2:
                raise ValueError(f"BatchNorm in train mode needs more than 1 value per channel; got input {x.shape}")
            if self.impl != "autodiff":
                y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon,
                                                self.impl == "onepass")
                self._update_running(mean, var, n)
                return y
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = _batch_stats(x32, one_pass=False)
            self._update_running(mean, var, n)
        scale = self.scale[...] * lax.rsqrt(var + self.epsilon)
        y = x32 * scale + (self.bias[...] - mean * scale)
        return y.astype(x.dtype)


class BasicBlock(nnx.Module):
    """Two 3x3 convs plus shortcut, then ReLU (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, projection: bool, *, conv: Callable, norm: Callable):
        self.conv1 = conv(cin, width, 3, stride)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, 1)
        self.bn2 = norm(width)
        self.downsample = nnx.List([conv(cin, width, 1, stride, bias=False), norm(width)]) if projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 at 4x width, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, projection: bool, *, conv: Callable, norm: Callable):
        cout = width * self.expansion
        self.conv1 = conv(cin, width, 1, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, stride, bias=False)
        self.bn2 = norm(width)
        self.conv3 = conv(width, cout, 1, 1, bias=False)
        self.bn3 = norm(cout)
        self.downsample = nnx.List([conv(cin, cout, 1, stride, bias=False), norm(cout)]) if projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + shortcut)


def final_map_size(variant: str, size: int) -> int:
    """Side of the last stage's feature map for an input of side `size` (explicit-padding arithmetic)."""
    if variant != "cifar":
        size = (size + 2 * 3 - 7) // 2 + 1  # 7x7 stride-2 stem
        size = (size + 2 * 1 - 3) // 2 + 1  # 3x3 stride-2 max-pool
    for stride in STRIDES[1:]:
        size = (size + 2 * 1 - 3) // stride + 1
    return size


def _pool_windows(x: jax.Array) -> tuple[list[jax.Array], tuple[int, int]]:
    """The 9 strided views of `x` padded by 1 with -inf, one per 3x3 window offset (row-major), and (ho, wo)."""
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    views = [xp[:, a : a + 2 * ho - 1 : 2, b : b + 2 * wo - 1 : 2] for a in range(3) for b in range(3)]
    return views, (ho, wo)


def _reduce_window_max(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max over `x` padded by 1 with -inf; autodiff routes each window's gradient to its first
    maximum (XLA's select-and-scatter), as torch does."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


@jax.custom_vjp
def _max_pool_first_max(x: jax.Array) -> jax.Array:
    """`_reduce_window_max` with its gradient built from the 9 strided views of the window offsets: the first
    maximum of each window in row-major order gets it, the same routing without select-and-scatter."""
    return _reduce_window_max(x)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride=2, padding=1): padding never wins the max (pads with -inf).

    On CPU with `_max_pool_first_max`'s gradient: XLA:CPU lowers select-and-scatter to an argmax over four
    int32 index arrays the size of the padded input, ~55 ms of a ~280 ms imagenet-stem ResNet-18 step at
    batch 128 on a 2-core Xeon, against ~3 ms (results/cpu_2026-11-28_intel/max_pool/). Elsewhere XLA's own.
    """
    if jax.default_backend() == "cpu":
        return _max_pool_first_max(x)
    return _reduce_window_max(x)


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _reduce_window_max(x)
    return y, (x, y)


def _max_pool_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = residuals
    views, (ho, wo) = _pool_windows(x)
    hp, wp = x.shape[1] + 2, x.shape[2] + 2
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(y.shape, bool)
    dxp = jnp.zeros((x.shape[0], hp, wp, x.shape[3]), g.dtype)
    for k, v in enumerate(views):
        a, b = divmod(k, 3)
        first = (v == y) & ~taken  # this offset holds the window's first maximum
        taken = taken | first
        config = ((0, 0, 0), (a, hp - a - 2 * ho + 1, 1), (b, wp - b - 2 * wo + 1, 1), (0, 0, 0))
        dxp = dxp + lax.pad(jnp.where(first, g, zero), zero, config)  # back to the window's strided positions
    return (dxp[:, 1:-1, 1:-1],)


_max_pool_first_max.defvjp(_max_pool_fwd, _max_pool_bwd)


class ResNet(nnx.Module):
    """A ResNet over NHWC float inputs; `variant` picks stem, shortcut rule and head (README, "Variants and
    parameter counts")."""

    def __init__(
        self,
        arch: str,
        variant: str = "cifar",
        num_classes: int = 10,
        *,
        dtype: Any = jnp.float32,
        conv_lowering: Lowering = "auto",
        batch_norm: str = DEFAULT_BATCH_NORM,
        rngs: nnx.Rngs,
    ):
        check_names(arch, variant)
        float64 = jnp.dtype(dtype) == jnp.float64
        if float64 and not jax.config.read("jax_enable_x64"):
            raise ValueError("dtype float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True) first")
        if conv_lowering not in LOWERINGS:
            raise ValueError(f"unknown conv lowering {conv_lowering!r}; valid choices: {', '.join(LOWERINGS)}")
        kind, depths = ARCHS[arch]
        self.arch, self.variant, self.num_classes = arch, variant, num_classes
        self.dtype = dtype
        article = variant == "article"
        conv = partial(Conv, dtype=dtype, lowering=conv_lowering, rngs=rngs, bias=article)
        norm = partial(BatchNorm, impl=batch_norm)  # BatchNorm names the valid choices for an unknown one
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        if variant == "cifar":
            self.conv1 = conv(3, 64, 3, 1, bias=False)
        else:
            self.conv1 = conv(3, 64, 7, 2, bias=False)
        self.bn1 = norm(64)
        cin = 64
        for s, (width, stride, n) in enumerate(zip(WIDTHS, STRIDES, depths, strict=True)):
            blocks = []
            for b in range(n):
                st = stride if b == 0 else 1
                cout = width * block_cls.expansion
                projection = (b == 0 and article) or st != 1 or cin != cout
                blocks.append(block_cls(cin, width, st, projection, conv=conv, norm=norm))
                cin = cout
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.fc = nnx.Linear(
            cin,
            num_classes,
            dtype=dtype,
            kernel_init=_torch_uniform(1.0 / math.sqrt(cin)),
            bias_init=_torch_uniform(1.0 / math.sqrt(cin)),
            rngs=rngs,
        )
        if float64:
            # A float64 model stores float64 variables too (float32 ones would round float64 weights on load and
            # give float64 logits only float32-accurate), initialized as the float32 model of the same seed is.
            nnx.update(self, jax.tree.map(lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a, nnx.state(self)))

    def _check_input(self, x: jax.Array, who: str = "a ResNet") -> None:
        # Integer images are raw pixels (|logits| in the hundreds, confident nonsense); torch's convolutions refuse
        # them too. Checked on every call, so apply_model and model(x) refuse them as predict does.
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{who} takes normalized float images, got {x.dtype}: pass flax_resnet.normalize(images) for uint8 "
                "pixels (the CIFAR-10 mean/std the models train with)"
            )
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, shape (N, H, W, 3); got shape {tuple(x.shape)}")
        if 0 in x.shape[1:3]:  # convolutions refuse these in torch; here they failed deep inside a lowering
            raise ValueError(f"images must be at least 1x1, got {x.shape[1]}x{x.shape[2]}")
        if self.variant == "article":
            h, w = final_map_size("article", x.shape[1]), final_map_size("article", x.shape[2])
            if (h, w) != (1, 1):
                raise ValueError(
                    f"the article variant flattens a 1x1 final map and so needs 32x32 inputs (final map 1x1); "
                    f"input {x.shape[1]}x{x.shape[2]} gives a {h}x{w} final map"
                )

    def stages(self, x: jax.Array) -> list[jax.Array]:
        """Outputs of the stem and of each of the four stages (NHWC)."""
        self._check_input(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        if self.variant != "cifar":
            y = max_pool_3x3_s2(y)
        outs = [y]
        for s in range(1, 5):
            for block in getattr(self, f"layer{s}"):
                y = block(y)
            outs.append(y)
        return outs

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.stages(x)[-1]
        if self.variant == "article":
            y = y.reshape(y.shape[0], math.prod(y.shape[1:]))  # not -1: that fails on an empty batch
        else:
            y = jnp.mean(y.astype(jnp.promote_types(y.dtype, jnp.float32)), axis=(1, 2)).astype(y.dtype)
        return self.fc(y).astype(jnp.promote_types(y.dtype, jnp.float32))


def create_model(
    arch: str,
    variant: str = "cifar",
    num_classes: int = 10,
    seed: int | jax.Array = 0,
    *,
    dtype: str | Any = "float32",
    conv_lowering: Lowering = "auto",
    batch_norm: str = DEFAULT_BATCH_NORM,
) -> ResNet:
    """Build a freshly initialized ResNet; unknown names raise ValueError naming the valid choices, and so do a
    class count below 1 or a seed that is neither an integer nor a PRNG key (they failed deep inside XLA or NNX).

    `dtype` is the compute dtype, by name or as a dtype (`jnp.bfloat16`): variables stay float32 under bfloat16
    compute; a float64 model (64-bit JAX only) stores float64 variables.
    """
    name = dtype if isinstance(dtype, str) else _dtype_name(dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    if not _integer(num_classes):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not (is_prng_key(seed) or _integer_scalar(seed)):
        raise ValueError(f"seed must be an integer or a jax.random.key, got {seed!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ResNet(
        arch, variant, num_classes, dtype=DTYPES[name], conv_lowering=conv_lowering, batch_norm=batch_norm,
        rngs=nnx.Rngs(seed if is_prng_key(seed) else jax.random.key(seed)),
    )


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integer_scalar(value: Any) -> bool:
    """A Python or numpy integer, or a 0-d integer array (a jnp.int32 seed, or one traced under jax.vmap); NNX
    itself takes only Python ints, so create_model turns each into a key the way NNX turns an int."""
    if _integer(value):
        return True
    dtype = getattr(value, "dtype", None)
    return getattr(value, "ndim", None) == 0 and dtype is not None and jnp.issubdtype(dtype, jnp.integer)


def _dtype_name(dtype: Any) -> str | None:
    """`dtype`'s name (`jnp.bfloat16` -> "bfloat16"), or None for what is no dtype (None too, which jnp.dtype
    would read as float64)."""
    try:
        return None if dtype is None else jnp.dtype(dtype).name
    except TypeError:
        return None


def require_model(model: Any, who: str, kind: type = nnx.Module, hint: str = "") -> None:
    """TypeError unless `model` is a `kind` (a Flax module): a torch module or a TrainState failed deep inside NNX
    or XLA, or (exported) gave keys nothing can load."""
    if not isinstance(model, kind):
        if hasattr(model, "opt_state"):
            hint = " (train.merge_model(graphdef, state) makes one of a TrainState)"
        raise TypeError(f"{who} takes a Flax model (flax_resnet.create_model), got {type(model).__name__}{hint}")


def check_concrete(model: Any, who: str, kind: type = nnx.Module) -> None:
    """`require_model`, and a TypeError for an `nnx.eval_shape` model (shapes only, no values)."""
    require_model(model, who, kind)
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(nnx.state(model))):
        raise TypeError(f"{who}: the model is abstract (nnx.eval_shape): it has shapes but no values; load weights "
                        "into it first (load_torch_state_dict)")  # fmt: skip


def is_prng_key(value: Any) -> bool:
    """One PRNG key: a `jax.random.key` or a raw `jax.random.PRNGKey` of the default implementation's shape."""
    if not isinstance(value, jax.Array):
        return False
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        return value.ndim == 0
    raw = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    return value.dtype == raw.dtype and value.shape == raw.shape


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded, as torch counts them)."""
    require_model(model, "count_params", hint=" (a torch module's count: sum(p.numel() for p in module.parameters()))")
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


def predict(model: ResNet, x: Any, *, jit: bool = True) -> jax.Array:
    """Eval-mode logits (N, classes) for normalized float NHWC images (`flax_resnet.normalize(uint8 images)`, the
    CIFAR-10 mean/std the models train with); the model's own mode is left untouched.

    Integer images are refused: raw pixels would give confident nonsense. Inputs run in float32, or float64 for
    a float64 model. `jit=False` runs op by op, which avoids a whole-network compile for one-off calls.
    """
    check_concrete(model, "predict", ResNet)
    x = jnp.asarray(x)
    model._check_input(x, "predict")
    x = x.astype(jnp.promote_types(model.dtype, jnp.float32))
    view = nnx.view(model, use_running_average=True)
    if not jit:
        return view(x)
    graphdef, state = nnx.split(view)
    return _forward(graphdef, state, x)
