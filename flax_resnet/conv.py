"""How a 2-D convolution is lowered: XLA's convolution or patches + one matrix multiply.

Both compute the same math over the same HWIO kernel, so parameters, conversion and parity do not depend on
the choice. XLA:CPU's convolution is very slow on tiny feature maps, where the matmul form wins; on GPU/TPU
XLA's convolution is the right choice (see DESIGN.md, "Convolution lowering").
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Lowering = Literal["auto", "xla", "matmul", "mixed"]
LOWERINGS: tuple[str, ...] = ("auto", "xla", "matmul", "mixed")

# On CPU (results/conv_shapes.md, ResNet-18 shapes at batch 128): XLA's kernel-gradient convolution is the
# bottleneck everywhere, and its forward convolution is slow on maps of a few positions. So: 1x1 convs are a
# strided slice + one matmul; 3x3 stride-1 convs on maps of >= 8x8 output positions use XLA forward/input
# gradient with a matmul kernel gradient ("mixed"); large kernels (the 7x7 stem) likewise; the rest
# (strided 3x3, maps below 8x8) use patches + matmul.
CPU_MIXED_MIN_POSITIONS = 64

Padding = tuple[tuple[int, int], tuple[int, int]]


def choose_lowering(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> str:
    """Pick the lowering for one convolution from the backend, kernel size, stride and output map size."""
    if jax.default_backend() != "cpu":
        return "xla"
    h, w = x_shape[1], x_shape[2]
    kh, kw = kernel_shape[0], kernel_shape[1]
    ho = (h + sum(padding[0]) - kh) // stride + 1
    wo = (w + sum(padding[1]) - kw) // stride + 1
    if kh == kw == 1:
        return "matmul"
    if kh >= 7 or (stride == 1 and ho * wo >= CPU_MIXED_MIN_POSITIONS):
        return "mixed"
    return "matmul"


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    if kh == kw == 1:
        patches = x[:, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride, :]
    else:
        taps = [
            x[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride, :]
            for i in range(kh)
            for j in range(kw)
        ]
        patches = jnp.concatenate(taps, axis=-1)  # (n, ho, wo, kh*kw*cin) in (i, j, c) order
    return jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout)).reshape(
        n, ho, wo, cout
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_mixed(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """XLA's convolution for the forward pass and the input gradient, patches-matmul for the kernel gradient.

    XLA:CPU computes the kernel gradient (a convolution whose "kernel" is the whole output map) very slowly;
    its forward and input-gradient convolutions are fast.
    """
    return _conv_xla(x, kernel, stride, padding)


def _conv_mixed_fwd(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding):
    return _conv_xla(x, kernel, stride, padding), (x, kernel)


def _conv_mixed_bwd(stride: int, padding: Padding, residuals, g: jax.Array):
    x, kernel = residuals
    dx = jax.vjp(lambda a: _conv_xla(a, kernel, stride, padding), x)[1](g)[0]
    dk = jax.vjp(lambda k: _conv_matmul(x, k, stride, padding), kernel)[1](g)[0]
    return dx, dk


_conv_mixed.defvjp(_conv_mixed_fwd, _conv_mixed_bwd)


def conv2d(
    x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, lowering: Lowering = "auto"
) -> jax.Array:
    """NHWC x HWIO convolution with explicit (symmetric or not) padding, lowered as chosen."""
    if lowering == "auto":
        lowering = choose_lowering(x.shape, kernel.shape, stride, padding)  # type: ignore[assignment]
    if lowering == "xla":
        return _conv_xla(x, kernel, stride, padding)
    if lowering == "matmul":
        return _conv_matmul(x, kernel, stride, padding)
    if lowering == "mixed":
        padding = (tuple(padding[0]), tuple(padding[1]))  # hashable: it is a static argument of the custom VJP
        return _conv_mixed(x, kernel, stride, padding)
    raise ValueError(f"unknown conv lowering {lowering!r}; valid choices: {', '.join(LOWERINGS)}")
