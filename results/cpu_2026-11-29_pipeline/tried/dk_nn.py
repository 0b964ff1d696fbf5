"""Winograd kernel gradient as NN dots: the output-gradient tiles transformed channel-major, (k, tiles), so each
position's dot is (k, tiles) @ (tiles, c) instead of conv.py's (tiles, c)^T @ (tiles, k).

Usage: dk_nn.py H C [REPEATS]. Throwaway measurement: backward of one Winograd conv (vjp, fwd included), batch 128.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import jax.numpy as jnp
from jax import lax
from timing import conv_inputs, timeit  # this folder (the script's own, on sys.path)

from flax_resnet import conv


def _grad_tiles_cmajor(g):
    """(m, 2t, 2s, k) -> 16 x (k, m*t*s): conv._wino_output_grad's tiles, channel-major."""
    m, h, w, k = g.shape
    g = jnp.transpose(g, (3, 0, 1, 2)).reshape(k, m, h // 2, 2, w // 2, 2)

    def a(y0, y1):
        return [y0, y0 + y1, y0 - y1, -y1]

    v = []
    for r in a(g[:, :, :, 0], g[:, :, :, 1]):
        v += a(r[..., 0], r[..., 1])
    return [vi.reshape(k, m * (h // 2) * (w // 2)) for vi in v]


@jax.custom_vjp
def wino_nn(x, kernel):
    return conv._wino_conv(x, kernel)


def _fwd(x, kernel):
    return conv._wino_conv(x, kernel), (x, kernel)


def _bwd(residuals, g):
    x, kernel = residuals
    m = conv._winograd_images(x.shape, max(kernel.shape[2:]))
    u_t = conv._wino_kernel(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))

    def chunk(du_t, xg):
        xc, gc = xg
        du_t = du_t + jnp.stack([d @ v for v, d in zip(conv._wino_input(xc), _grad_tiles_cmajor(gc), strict=True)])
        return du_t, conv._wino_chunk(gc, u_t)

    du0 = jnp.zeros((16, kernel.shape[3], kernel.shape[2]), kernel.dtype)
    du_t, dxs = lax.scan(chunk, du0, (conv._chunks(x, m), conv._chunks(g, m)))
    dk = jax.vjp(conv._wino_kernel, kernel)[1](du_t.transpose(0, 2, 1))[0]
    return dxs.reshape(x.shape), dk


wino_nn.defvjp(_fwd, _bwd)


def main() -> None:
    h, c = int(sys.argv[1]), int(sys.argv[2])
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 9
    x, k, g = conv_inputs(h, c)
    fns = {name: jax.jit(lambda x, k, f=f: jax.vjp(f, x, k)[1](g))
           for name, f in (("TN (conv.py)", conv._conv_winograd), ("NN", wino_nn))}
    outs = {name: f(x, k) for name, f in fns.items()}
    for _ in range(3):
        print("  ".join(f"{name} {timeit(f, x, k, repeats=repeats):6.1f} ms" for name, f in fns.items()), flush=True)
    (a, b) = outs.values()
    print(f"{h}x{h}x{c}: max |diff| dx {float(jnp.max(jnp.abs(a[0] - b[0]))):.2e} "
          f"dk {float(jnp.max(jnp.abs(a[1] - b[1]))):.2e} (|dk| max {float(jnp.max(jnp.abs(a[1]))):.1f})")


if __name__ == "__main__":
    main()
