"""How a 2-D convolution is lowered: XLA's convolution or patches + one matrix multiply.

Both compute the same math over the same HWIO kernel, so parameters, conversion and parity do not depend on
the choice. XLA:CPU's convolution is very slow on tiny feature maps, where the matmul form wins; on GPU/TPU
XLA's convolution is the right choice (see DESIGN.md, "Convolution lowering").
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Lowering = Literal["auto", "xla", "matmul"]
LOWERINGS: tuple[str, ...] = ("auto", "xla", "matmul")

# On CPU, convolutions whose output map has at most this many positions use the matmul lowering.
CPU_MATMUL_MAX_POSITIONS = 64

Padding = tuple[tuple[int, int], tuple[int, int]]


def choose_lowering(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> str:
    """Pick the lowering for one convolution from the backend and the output map size."""
    if jax.default_backend() != "cpu":
        return "xla"
    h, w = x_shape[1], x_shape[2]
    kh, kw = kernel_shape[0], kernel_shape[1]
    ho = (h + sum(padding[0]) - kh) // stride + 1
    wo = (w + sum(padding[1]) - kw) // stride + 1
    return "matmul" if ho * wo <= CPU_MATMUL_MAX_POSITIONS else "xla"


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
    raise ValueError(f"unknown conv lowering {lowering!r}; valid choices: {', '.join(LOWERINGS)}")
