"""One Winograd backward chunk's kernel-gradient work at a cifar ResNet-18 shape, in parts: conv.py's form
(both tile transforms, 16 dots (tiles, c)^T @ (tiles, k)) against the output-gradient tiles transformed
channel-major so the dots are NN (dk_nn.py), and each transform alone. Usage: dk_chunk.py H C. Throwaway.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import jax.numpy as jnp
import numpy as np
from dk_nn import _grad_tiles_cmajor
from timing import timeit  # this folder (the script's own, on sys.path)

from flax_resnet import conv


def main() -> None:
    h, c = int(sys.argv[1]), int(sys.argv[2])
    m = conv._winograd_images((128, h, h, c), c)
    rng = np.random.default_rng(0)
    xc = jnp.asarray(rng.standard_normal((m, h, h, c), np.float32))
    gc = jnp.asarray(rng.standard_normal((m, h, h, c), np.float32))
    parts = {
        "TN (conv.py)": lambda x, g: jnp.stack(
            [v.T @ d for v, d in zip(conv._wino_input(x), conv._wino_output_grad(g), strict=True)]
        ),
        "NN, g channel-major": lambda x, g: jnp.stack(
            [d @ v for v, d in zip(conv._wino_input(x), _grad_tiles_cmajor(g), strict=True)]
        ),
        "x transform": lambda x, g: conv._wino_input(x),
        "g transform": lambda x, g: conv._wino_output_grad(g),
        "g transform channel-major": lambda x, g: _grad_tiles_cmajor(g),
        "g transpose alone": lambda x, g: jnp.transpose(g, (3, 0, 1, 2)),
    }
    print(f"{h}x{h}x{c}, chunk of {m} images")
    for name, f in parts.items():
        print(f"  {name:26s} {timeit(jax.jit(f), xc, gc, repeats=40):.3f} ms")


if __name__ == "__main__":
    main()
