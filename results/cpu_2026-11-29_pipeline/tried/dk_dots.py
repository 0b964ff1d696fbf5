"""The Winograd kernel gradient's 16 dots of one 32x32x64 chunk (2048 tiles, 64 channels) in five forms, on
operands already in memory: as conv.py has them, (tiles, c)^T @ (tiles, k) one per position ("separate"); one
batched dot; positions paired (128 wide) or in fours (256 wide), keeping the diagonal blocks; and "NN", the
left operand stored channel-major, (c, tiles) @ (tiles, k). Throwaway measurement: usage dk_dots.py.
"""


import jax
import jax.numpy as jnp
import numpy as np
from timing import timeit  # this folder (the script's own, on sys.path)


def blocks(width: int, c: int):
    """Dots of `width // c` positions side by side, keeping each position's own (c, c) diagonal block."""
    per = width // c

    def run(vs, ds):
        out = []
        for v, d in zip(vs, ds, strict=True):
            m = v.T @ d
            out += [m[j * c : (j + 1) * c, j * c : (j + 1) * c] for j in range(per)]
        return jnp.stack(out)

    return jax.jit(run)


def main() -> None:
    k, c = 2048, 64
    rng = np.random.default_rng(0)
    vs = [jnp.asarray(rng.random((k, c), np.float32)) for _ in range(16)]
    ds = [jnp.asarray(rng.random((k, c), np.float32)) for _ in range(16)]
    sep = jax.jit(lambda vs, ds: jnp.stack([v.T @ d for v, d in zip(vs, ds, strict=True)]))
    bat = jax.jit(lambda v, d: jnp.einsum("pkc,pkd->pcd", v, d))
    nn = jax.jit(lambda vt, ds: jnp.stack([v @ d for v, d in zip(vt, ds, strict=True)]))
    grouped = {w: [jnp.concatenate(vs[i : i + w // c], 1) for i in range(0, 16, w // c)] for w in (128, 256)}
    gd = {w: [jnp.concatenate(ds[i : i + w // c], 1) for i in range(0, 16, w // c)] for w in (128, 256)}
    vt = [jnp.asarray(np.ascontiguousarray(np.asarray(v).T)) for v in vs]
    ref = sep(vs, ds)
    for name, f, a in (
        ("separate", sep, (vs, ds)),
        ("batched", bat, (jnp.stack(vs), jnp.stack(ds))),
        ("paired128", blocks(128, c), (grouped[128], gd[128])),
        ("quad256", blocks(256, c), (grouped[256], gd[256])),
        ("NN", nn, (vt, ds)),
    ):
        out = f(*a)
        print(f"{name:10s} {timeit(f, *a, repeats=30):.2f} ms  max diff {float(jnp.max(jnp.abs(out - ref))):.2e}")


if __name__ == "__main__":
    main()
