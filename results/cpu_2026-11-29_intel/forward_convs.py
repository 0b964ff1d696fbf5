"""Forward pass only of each distinct conv of the cifar-stem ResNet-18 (batch 128, fp32): JAX's chosen
lowering against torch eager, and their sums over the network's layers.

Usage: python forward_convs.py [REPEATS]. Median of REPEATS calls after one warm-up call each.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import jax
import numpy as np
import torch

from flax_resnet import conv
from flax_resnet.benchmark import conv_shapes


def median_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(repeats: int = 10) -> None:
    rng = np.random.default_rng(0)
    total_jax = total_torch = 0.0
    for (h, w, cin, cout, k, stride), counts in conv_shapes("resnet18", ("cifar",)).items():
        if k == 1:
            continue  # projections: small either way
        p = k // 2
        padding = ((p, p), (p, p))
        x = rng.standard_normal((128, h, w, cin), dtype=np.float32)
        kernel = (rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.05).astype(np.float32)
        chosen = conv.choose_lowering(x.shape, kernel.shape, stride, padding)
        fn = jax.jit(lambda a, b, s=stride, pad=padding: conv.conv2d(a, b, s, pad))
        xj, kj = jax.device_put(x), jax.device_put(kernel)
        t_jax = median_ms(lambda fn=fn, xj=xj, kj=kj: fn(xj, kj), repeats)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        wt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        with torch.no_grad():
            t_torch = median_ms(lambda xt=xt, wt=wt, s=stride, p=p: torch.nn.functional.conv2d(xt, wt, stride=s,
                                                                                             padding=p), repeats)
        n = counts["cifar"]
        total_jax += n * t_jax
        total_torch += n * t_torch
        print(f"{h}x{w} {cin}->{cout} {k}x{k}/{stride} x{n}  {chosen:9} jax {t_jax:6.1f} ms  torch {t_torch:6.1f} ms")
    print(f"sum over the layers: jax {total_jax:.0f} ms, torch {total_torch:.0f} ms "
          f"(jax {jax.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
