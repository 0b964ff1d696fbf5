"""Winograd's kernel transform G g G^T on XLA:CPU: the einsum it was against the (16, 9) matmul by G (x) G it
is now (`flax_resnet/conv.py::_wino_kernel`), forward and gradient, for 3x3 kernels of 64..512 channels.

Usage: python wino_kernel.py. Median of 30 calls after one warm-up call each; max |difference| to the einsum.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import conv


def einsum_form(kernel: jax.Array) -> jax.Array:
    g = jnp.asarray(conv._WINO_G, kernel.dtype)
    return jnp.einsum("ai,ijck,bj->abck", g, kernel, g).reshape(16, *kernel.shape[2:])


def median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(30):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    for c in (64, 128, 256, 512):
        kernel = jax.device_put(rng.standard_normal((3, 3, c, c)).astype(np.float32))
        du = jax.device_put(rng.standard_normal((16, c, c)).astype(np.float32))
        row = []
        outs = {}
        for name, fn in (("einsum", einsum_form), ("matmul", conv._wino_kernel)):
            fwd = jax.jit(fn)
            grad = jax.jit(lambda k, d, fn=fn: jax.vjp(fn, k)[1](d)[0])
            outs[name] = (np.asarray(fwd(kernel)), np.asarray(grad(kernel, du)))
            t_fwd, t_grad = median_ms(fwd, kernel), median_ms(grad, kernel, du)
            row.append(f"{name} forward {t_fwd:6.3f} ms, gradient {t_grad:6.3f} ms")
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs["einsum"], outs["matmul"], strict=True))
        print(f"{c:3d} channels: " + "; ".join(row) + f"; max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
