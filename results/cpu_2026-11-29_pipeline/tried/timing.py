"""Shared by this folder's throwaway scripts: median wall time of a jitted call, after one untimed call."""

import time

import jax
import numpy as np


def timeit(fn, *args, repeats: int = 30) -> float:
    """Median milliseconds of `repeats` calls of `fn(*args)`, each waited for."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def conv_inputs(h: int, c: int, batch: int = 128) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Input (batch, h, h, c), 3x3 kernel c -> c and output gradient, seeded: one conv's operands."""
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((batch, h, h, c), np.float32))
    k = jax.numpy.asarray(rng.standard_normal((3, 3, c, c), np.float32) * 0.05)
    g = jax.numpy.asarray(rng.standard_normal((batch, h, h, c), np.float32))
    return x, k, g
