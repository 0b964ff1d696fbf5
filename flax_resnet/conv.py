"""How a 2-D convolution is lowered: XLA's convolution or patches + one matrix multiply.

Both compute the same math over the same HWIO kernel, so parameters, conversion and parity do not depend on
the choice. XLA:CPU's convolution is very slow on tiny feature maps, where the matmul form wins; on GPU/TPU
XLA's convolution is the right choice (README, "Speed").
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

Lowering = Literal["auto", "xla", "matmul", "mixed", "chunked", "winograd", "dense"]
LOWERINGS: tuple[str, ...] = ("auto", "xla", "matmul", "mixed", "chunked", "winograd", "dense")

# On CPU (results/conv_shapes.md, ResNet-18 shapes at batch 128): XLA's convolution is slow, above all its
# kernel gradient, and patches + one matmul over the whole batch streams a patch buffer of up to ~300 MB
# through memory. So: 1x1 convs are a strided slice + one matmul; the 7x7 stem is XLA's forward and input
# gradient with a patches-matmul kernel gradient ("mixed"); the 3x3 stem conv on 3 input channels (a small
# patch matrix) is one patches-matmul; float32 3x3 stride-1 "same" convs on even maps of at least 4x4 (most
# of a ResNet's work) are Winograd F(2x2, 3x3) a few images at a time ("winograd", 2.25x fewer multiplies);
# every other conv is patches-matmul a few images at a time ("chunked"), forward and both gradients; except
# where every output pixel's window covers the whole input map (1x1 maps, 2x2 under a 3x3 kernel), which is
# one matmul by a block matrix of the kernel's taps ("dense": no products with the padding). Winograd
# only for float32: in float64 (the parity suite) it measured slower at small batches and compiles ~2x slower
# per shape, and in bfloat16 its tile transforms would add rounding that a direct conv does not have.
CPU_CHUNKED_MIN_CHANNELS = 16

Padding = tuple[tuple[int, int], tuple[int, int]]


def _out_hw(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> tuple[int, int]:
    """Output height and width of a conv over NHWC `x_shape` with an HWIO kernel."""
    return (
        (x_shape[1] + sum(padding[0]) - kernel_shape[0]) // stride + 1,
        (x_shape[2] + sum(padding[1]) - kernel_shape[1]) // stride + 1,
    )


def choose_lowering(
    x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding, dtype: Any = jnp.float32
) -> str:
    """Pick the lowering for one convolution from the backend, kernel size, input channels, geometry and dtype."""
    if jax.default_backend() != "cpu":
        return "xla"
    kh, kw, cin = kernel_shape[0], kernel_shape[1], kernel_shape[2]
    if kh == kw == 1:
        return "matmul"
    if dense_applies(x_shape, kernel_shape, stride, padding):
        return "dense"
    if kh >= 7:
        return "mixed"
    if cin < CPU_CHUNKED_MIN_CHANNELS:
        return "matmul"
    big_enough = x_shape[1] >= 4 and x_shape[2] >= 4  # at 2x2, one tile: the transforms cost more than they save
    if jnp.dtype(dtype) == jnp.float32 and big_enough and winograd_applies(x_shape, kernel_shape, stride, padding):
        return "winograd"
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


def _images_per_chunk(n: int, bytes_per_image: int, budget: int) -> int:
    """The largest divisor of the batch `n` whose chunk fits in `budget` bytes (at least 1)."""
    m = max(1, min(n, budget // max(1, bytes_per_image)))
    while n % m:
        m -= 1
    return m


def _chunk_images(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> int:
    """Images per chunk of the `chunked` lowering: its patch buffer fits in CHUNK_BYTES."""
    ho, wo = _out_hw(x_shape, kernel_shape, stride, padding)
    return _images_per_chunk(x_shape[0], ho * wo * kernel_shape[0] * kernel_shape[1] * x_shape[3] * 4, CHUNK_BYTES)


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


# `winograd`: F(2x2, 3x3) (Lavin & Gray, 2016) for 3x3 stride-1 convs padded by 1 on even maps. Each 4x4
# input tile (stride 2) is transformed (B^T d B), the 3x3 kernel too (G g G^T), the 16 transformed positions
# are 16 matmuls over (tiles, cin) x (cin, cout), and each result maps back to a 2x2 output tile (A^T m A):
# 16 multiplies per 4 outputs instead of 36. The input gradient is the same routine on the output gradient
# with the flipped, transposed kernel; the kernel gradient is accumulated in the transformed domain. A few
# images at a time, so the transformed tiles (4x the input) stay in cache.
WINOGRAD_CHUNK_BYTES = 8 * 2**20
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_applies(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> bool:
    """Whether the `winograd` lowering handles this conv: 3x3, stride 1, padding 1 all round, even h and w."""
    kh, kw = kernel_shape[0], kernel_shape[1]
    same = tuple(map(tuple, padding)) == ((1, 1), (1, 1))
    return kh == kw == 3 and stride == 1 and same and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0


def _winograd_images(x_shape: tuple[int, ...], channels: int) -> int:
    """Images per chunk of the `winograd` lowering: its transformed tiles fit in WINOGRAD_CHUNK_BYTES."""
    n, h, w = x_shape[:3]
    return _images_per_chunk(n, 4 * h * w * channels * 4, WINOGRAD_CHUNK_BYTES)  # 16 values per 2x2 tile


def _b_t(d: list[jax.Array]) -> list[jax.Array]:
    """B^T applied along one axis to its 4 strided views."""
    d0, d1, d2, d3 = d
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _wino_input(x: jax.Array) -> list[jax.Array]:
    """(m, h, w, c) -> 16 x (m*h/2*w/2, c): B^T d B of every 4x4 tile (stride 2) of the input padded by 1.

    A list, not one stacked array: each position feeds its own matmul, so no copy gathers the 16 (nor
    their gradients' 16): forward and both gradients 12-16% faster at 32x32x64-8x8x256 on a 2-core
    Xeon, the train step 10-27% (results/cpu_2026-11-28_intel/winograd_lists/)."""
    m, h, w, c = x.shape
    t, s = h // 2, w // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    v = []
    for r in _b_t([xp[:, a : a + 2 * t : 2] for a in range(4)]):
        v += _b_t([r[:, :, b : b + 2 * s : 2] for b in range(4)])
    return [vi.reshape(m * t * s, c) for vi in v]


def _wino_kernel(kernel: jax.Array) -> jax.Array:
    """(3, 3, cin, cout) -> (16, cin, cout): G g G^T, as one (16, 9) x (9, cin*cout) matmul by G (x) G.

    The einsum form ("ai,ijck,bj->abck") ran as general dots on XLA:CPU: 1.0-28 ms per conv from 64 to 512
    channels, forward, against 0.15-1.0 ms for this matmul; gradient 0.28-6.5 against 0.11-0.75 ms
    (results/cpu_2026-11-29_intel/wino_kernel.py)."""
    g = jnp.kron(jnp.asarray(_WINO_G, kernel.dtype), jnp.asarray(_WINO_G, kernel.dtype))
    u = jnp.matmul(g, kernel.reshape(9, -1), precision=lax.Precision.HIGHEST)
    return u.reshape(16, *kernel.shape[2:])


def _wino_output(mm: list[jax.Array], m: int, t: int, s: int) -> jax.Array:
    """16 x (m*t*s, k) -> (m, 2t, 2s, k): A^T M A for every tile."""
    k = mm[0].shape[-1]
    p = [q.reshape(m, t, s, k) for q in mm]  # p[4i + j]: tile position (i, j)
    rows = (
        [p[j] + p[4 + j] + p[8 + j] for j in range(4)],  # A^T along i
        [p[4 + j] - p[8 + j] - p[12 + j] for j in range(4)],
    )
    out = [jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], axis=3) for r in rows]  # along j: (m, t, s, 2, k)
    return jnp.stack(out, axis=2).reshape(m, 2 * t, 2 * s, k)


def _wino_output_grad(g: jax.Array) -> list[jax.Array]:
    """(m, 2t, 2s, k) -> 16 x (m*t*s, k): A g A^T per 2x2 tile, the transpose of `_wino_output`."""
    m, h, w, k = g.shape
    g = g.reshape(m, h // 2, 2, w // 2, 2, k)

    def a(y0: jax.Array, y1: jax.Array) -> list[jax.Array]:
        return [y0, y0 + y1, y0 - y1, -y1]

    v = []
    for r in a(g[:, :, 0], g[:, :, 1]):
        v += a(r[:, :, :, 0], r[:, :, :, 1])
    return [vi.reshape(m * (h // 2) * (w // 2), k) for vi in v]


def _wino_chunk(x: jax.Array, u: jax.Array) -> jax.Array:
    m, h, w, _ = x.shape
    return _wino_output([v @ u[p] for p, v in enumerate(_wino_input(x))], m, h // 2, w // 2)


def _wino_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    u = _wino_kernel(kernel)
    ys = lax.map(lambda xc: _wino_chunk(xc, u), _chunks(x, _winograd_images(x.shape, max(kernel.shape[2:]))))
    return ys.reshape(x.shape[0], *ys.shape[2:])


@jax.custom_vjp
def _conv_winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, even h and w: Winograd F(2x2, 3x3), chunked; gradients likewise."""
    return _wino_conv(x, kernel)


def _conv_winograd_fwd(x: jax.Array, kernel: jax.Array):
    return _wino_conv(x, kernel), (x, kernel)


def _conv_winograd_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    m = _winograd_images(x.shape, max(kernel.shape[2:]))
    u_t = _wino_kernel(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))  # input gradient = conv with this kernel

    def chunk(du: jax.Array, xg: tuple[jax.Array, jax.Array]):
        xc, gc = xg
        du = du + jnp.stack([v.T @ d for v, d in zip(_wino_input(xc), _wino_output_grad(gc), strict=True)])
        return du, _wino_chunk(gc, u_t)

    du0 = jnp.zeros((16, *kernel.shape[2:]), kernel.dtype)
    du, dxs = lax.scan(chunk, du0, (_chunks(x, m), _chunks(g, m)))
    dk = jax.vjp(_wino_kernel, kernel)[1](du)[0]  # G^T dU G
    return dxs.reshape(x.shape), dk


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


# `dense`: when every output pixel's window covers every input pixel (a 1x1 map under any kernel, a 2x2 map
# under a 3x3 kernel padded by 1), the conv is one matmul of each flattened image (h*w*cin) by a block matrix
# (h*w*cin, ho*wo*cout) whose block (input pixel, output pixel) is the kernel tap joining them. It multiplies
# only real data: patches + matmul also multiplies the zero padding, 9x the products on a 1x1 map and 2.25x
# on 2x2. The gradients are autodiff's: two matmuls, and the block matrix's gradient summed back into taps.
# ResNet-18's imagenet stem runs its last two stages at 2x2 and 1x1 (results/cpu_2026-11-29_intel/).
DENSE_MAX_BLOCKS_PER_TAP = 2  # the block matrix holds at most this many copies of the kernel


def _dense_taps(
    x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding
) -> list[tuple[int, int]] | None:
    """The tap joining each (input pixel, output pixel) pair, input-major; None if a pair has no tap."""
    ho, wo = _out_hw(x_shape, kernel_shape, stride, padding)
    if ho < 1 or wo < 1:
        return None
    # per axis first (h*ho offsets, not h*w*ho*wo pairs): a pair has a tap iff its row and column offsets do
    rows = [[yi - yo * stride + padding[0][0] for yo in range(ho)] for yi in range(x_shape[1])]
    cols = [[xi - xo * stride + padding[1][0] for xo in range(wo)] for xi in range(x_shape[2])]
    if not all(0 <= i < kernel_shape[0] for r in rows for i in r) or not all(
        0 <= j < kernel_shape[1] for c in cols for j in c
    ):
        return None
    return [(i, j) for r in rows for c in cols for i in r for j in c]


def dense_applies(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding) -> bool:
    """Whether the `dense` lowering handles this conv: every output pixel's window covers the whole input map
    (so the block matrix has no zero blocks), and that matrix holds at most DENSE_MAX_BLOCKS_PER_TAP copies
    of each tap's weights on average."""
    taps = _dense_taps(x_shape, kernel_shape, stride, padding)
    return taps is not None and len(taps) <= DENSE_MAX_BLOCKS_PER_TAP * kernel_shape[0] * kernel_shape[1]


def _conv_dense(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    n, h, w, cin = x.shape
    cout = kernel.shape[3]
    taps = _dense_taps(x.shape, kernel.shape, stride, padding)
    assert taps is not None
    p_out = len(taps) // (h * w)
    rows = [  # one (cin, p_out, cout) slab per input pixel: the taps to each output pixel, side by side
        jnp.stack([kernel[i, j] for i, j in taps[p * p_out : (p + 1) * p_out]], axis=1) for p in range(h * w)
    ]
    weights = jnp.stack(rows).reshape(h * w * cin, p_out * cout)
    y = jnp.dot(x.reshape(n, h * w * cin), weights)
    return y.reshape(n, *_out_hw(x.shape, kernel.shape, stride, padding), cout)


# The lowerings that handle some geometries only, each with its check; every other lowering handles all.
_GEOMETRY_CHECKS = {"winograd": winograd_applies, "dense": dense_applies}
GEOMETRY_BOUND: tuple[str, ...] = tuple(_GEOMETRY_CHECKS)


def lowering_applies(
    lowering: str, x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: Padding
) -> bool:
    """Whether `lowering` handles this geometry (all but those in GEOMETRY_BOUND handle every one)."""
    check = _GEOMETRY_CHECKS.get(lowering)
    return check is None or check(x_shape, kernel_shape, stride, padding)


def conv2d(
    x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, lowering: Lowering = "auto"
) -> jax.Array:
    """NHWC x HWIO convolution with explicit (symmetric or not) padding, lowered as chosen."""
    if lowering == "auto":
        lowering = choose_lowering(x.shape, kernel.shape, stride, padding, x.dtype)  # type: ignore[assignment]
    if lowering == "xla":
        return _conv_xla(x, kernel, stride, padding)
    if lowering == "matmul":
        return _conv_matmul(x, kernel, stride, padding)
    if lowering == "winograd":
        if not winograd_applies(x.shape, kernel.shape, stride, padding):
            raise ValueError(
                f"the winograd lowering needs a 3x3 kernel, stride 1, padding 1 and even height and width; got "
                f"kernel {kernel.shape[:2]}, stride {stride}, padding {padding}, input {x.shape}"
            )
        return _conv_winograd(x, kernel)
    if lowering == "dense":
        if not dense_applies(x.shape, kernel.shape, stride, padding):
            raise ValueError(
                f"the dense lowering needs every output pixel's window to cover the whole input map (e.g. 1x1 maps, "
                f"or 2x2 under a 3x3 kernel padded by 1); got kernel {kernel.shape[:2]}, stride {stride}, "
                f"padding {padding}, input {x.shape}"
            )
        return _conv_dense(x, kernel, stride, padding)
    if lowering in ("mixed", "chunked"):
        padding = (tuple(padding[0]), tuple(padding[1]))  # hashable: it is a static argument of the custom VJP
        return (_conv_mixed if lowering == "mixed" else _conv_chunked)(x, kernel, stride, padding)
    raise ValueError(f"unknown conv lowering {lowering!r}; valid choices: {', '.join(LOWERINGS)}")
