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

Lowering = Literal["auto", "xla", "matmul", "mixed", "chunked"]
LOWERINGS: tuple[str, ...] = ("auto", "xla", "matmul", "mixed", "chunked")

# On CPU (results/conv_shapes.md, ResNet-18 shapes at batch 128): XLA's convolution is slow, above all its
# kernel gradient, and patches + one matmul over the whole batch streams a patch buffer of up to ~300 MB
# through memory. So: 1x1 convs are a strided slice + one matmul; the 7x7 stem is XLA's forward and input
# gradient with a patches-matmul kernel gradient ("mixed"); the 3x3 stem conv on 3 input channels (a small
# patch matrix) is one patches-matmul; every other conv is patches-matmul a few images at a time
# ("chunked"), forward and both gradients.
CPU_CHUNKED_MIN_CHANNELS = 16

Padding = tuple[tuple[int, int], tuple[int, int]]


def choose_lowering(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> str:
    """Pick the lowering for one convolution from the backend, kernel size and input channels."""
    if jax.default_backend() != "cpu":
        return "xla"
    kh, kw, cin = kernel_shape[0], kernel_shape[1], kernel_shape[2]
    if kh == kw == 1:
        return "matmul"
    if kh >= 7:
        return "mixed"
    if cin < CPU_CHUNKED_MIN_CHANNELS:
        return "matmul"
    return "chunked"


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


# `chunked`: patches + matmul over a few images at a time (a lax.scan over the batch), so the patch buffer
# stays in cache instead of streaming ~300 MB through memory (32x32x64, batch 128); gradients likewise.
CHUNK_BYTES = 6 * 2**20


def _chunk_images(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> int:
    """Images per chunk: the largest divisor of the batch whose patch buffer fits in CHUNK_BYTES (>= 1)."""
    n, h, w, cin = x_shape
    kh, kw = kernel_shape[0], kernel_shape[1]
    ho = (h + sum(padding[0]) - kh) // stride + 1
    wo = (w + sum(padding[1]) - kw) // stride + 1
    per_image = max(1, ho * wo * kh * kw * cin * 4)
    m = max(1, min(n, CHUNK_BYTES // per_image))
    while n % m:
        m -= 1
    return m


def _chunks(a: jax.Array, m: int) -> jax.Array:
    return a.reshape(a.shape[0] // m, m, *a.shape[1:])


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_chunked(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Patches + matmul, a chunk of images at a time; the backward pass is chunked the same way."""
    m = _chunk_images(x.shape, kernel.shape, stride, padding)
    ys = lax.map(lambda xc: _conv_matmul(xc, kernel, stride, padding), _chunks(x, m))
    return ys.reshape(x.shape[0], *ys.shape[2:])


def _conv_chunked_fwd(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding):
    return _conv_chunked(x, kernel, stride, padding), (x, kernel)


def _conv_chunked_bwd(stride: int, padding: Padding, residuals, g: jax.Array):
    x, kernel = residuals
    m = _chunk_images(x.shape, kernel.shape, stride, padding)

    def chunk(dk: jax.Array, xg: tuple[jax.Array, jax.Array]):
        xc, gc = xg
        _, vjp = jax.vjp(lambda a, k: _conv_matmul(a, k, stride, padding), xc, kernel)
        dxc, dkc = vjp(gc)
        return dk + dkc, dxc

    dk, dxs = lax.scan(chunk, jnp.zeros_like(kernel), (_chunks(x, m), _chunks(g, m)))
    return dxs.reshape(x.shape), dk


_conv_chunked.defvjp(_conv_chunked_fwd, _conv_chunked_bwd)


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
    if lowering in ("mixed", "chunked"):
        padding = (tuple(padding[0]), tuple(padding[1]))  # hashable: it is a static argument of the custom VJP
        return (_conv_mixed if lowering == "mixed" else _conv_chunked)(x, kernel, stride, padding)
    raise ValueError(f"unknown conv lowering {lowering!r}; valid choices: {', '.join(LOWERINGS)}")
