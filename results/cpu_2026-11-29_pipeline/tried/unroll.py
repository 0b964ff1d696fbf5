"""Winograd conv at one ResNet-18 cifar shape: chunk loop (lax.map/scan, as in conv.py) against the same chunks
unrolled in Python (independent ops the XLA:CPU thunk executor may run on both threads at once).

Usage: unroll.py H C [REPEATS]. Throwaway measurement; times forward and forward+backward, batch 128, fp32.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import jax.numpy as jnp
from timing import conv_inputs, timeit  # this folder (the script's own, on sys.path)

from flax_resnet import conv


def unrolled(x, kernel):
    @jax.custom_vjp
    def f(x, kernel):
        return fwd(x, kernel)[0]

    def fwd(x, kernel):
        u = conv._wino_kernel(kernel)
        m = conv._winograd_images(x.shape, max(kernel.shape[2:]))
        ys = [conv._wino_chunk(x[i : i + m], u) for i in range(0, x.shape[0], m)]
        return jnp.concatenate(ys), (x, kernel)

    def bwd(res, g):
        x, kernel = res
        m = conv._winograd_images(x.shape, max(kernel.shape[2:]))
        u_t = conv._wino_kernel(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
        dus, dxs = [], []
        for i in range(0, x.shape[0], m):
            xc, gc = x[i : i + m], g[i : i + m]
            tiles = zip(conv._wino_input(xc), conv._wino_output_grad(gc), strict=True)
            dus.append(jnp.stack([v.T @ d for v, d in tiles]))
            dxs.append(conv._wino_chunk(gc, u_t))
        while len(dus) > 1:  # pairwise: independent adds
            dus = [a + b for a, b in zip(dus[::2], dus[1::2], strict=False)] + (dus[-1:] if len(dus) % 2 else [])
        dk = jax.vjp(conv._wino_kernel, kernel)[1](dus[0])[0]
        return jnp.concatenate(dxs), dk

    f.defvjp(fwd, bwd)
    return f(x, kernel)


def looped(x, kernel):
    return conv._conv_winograd(x, kernel)


def main() -> None:
    h, c = int(sys.argv[1]), int(sys.argv[2])
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    x, k, g = conv_inputs(h, c)
    res = {}
    for name, f in (("loop", looped), ("unrolled", unrolled)):
        fw = jax.jit(f)
        fb = jax.jit(lambda x, k, f=f: jax.vjp(f, x, k)[1](g))
        t0 = time.perf_counter()
        fb.lower(x, k).compile()
        res[name] = (f(x, k), fb(x, k))
        print(f"{h}x{h}x{c} {name}: compile(bwd) {time.perf_counter() - t0:.1f}s", flush=True)
    for _ in range(2):
        for name, f in (("loop", looped), ("unrolled", unrolled)):
            fw = jax.jit(f)
            fb = jax.jit(lambda x, k, f=f: jax.vjp(f, x, k)[1](g))
            print(f"  {name:9s} fwd {timeit(fw, x, k, repeats=repeats):6.1f} ms   "
                  f"fwd+bwd(vjp) {timeit(fb, x, k, repeats=repeats):6.1f} ms")
    (y0, d0), (y1, d1) = res["loop"], res["unrolled"]
    print("  max |diff| y", float(jnp.max(jnp.abs(y0 - y1))), "dx", float(jnp.max(jnp.abs(d0[0] - d1[0]))),
          "dk", float(jnp.max(jnp.abs(d0[1] - d1[1]))))


if __name__ == "__main__":
    main()
