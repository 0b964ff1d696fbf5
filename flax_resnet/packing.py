"""A training state carried through jit calls as a few arrays instead of hundreds.

jit's host work per call grows with the number of array arguments, and a ResNet-18's TrainState holds 186
(cifar variant) to 227 (article) arrays, most of them per-channel vectors: BatchNorm scales, biases and
statistics, their momentum buffers, counters. Where a step is short (the article recipe's batch of 128 on a
GPU) that host work, not the device, sets the pace. `StatePacking` moves every leaf of at most one
dimension into one 1-D buffer per dtype and passes the weight tensors through as they are, so a
ResNet-18's state travels as 44-46 arrays (the trainer's call: 0.19-0.24 ms of host time instead of
0.74-0.85 on this 2-core CPU; results/cpu_2026-11-28/packed_state/). Slicing the vectors back out inside
the jitted function costs the device next to nothing; packing the weight tensors as well would copy them
every step (tried: steps ~3x slower on this CPU; results/cpu_2026-11-28/packed_state/pack_everything.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class StatePacking:
    """pack/unpack between a pytree of arrays (structure, shapes and dtypes fixed by `example`) and a list:
    one 1-D buffer per dtype of the small leaves (ndim <= 1), in first-seen dtype order, then the other leaves
    in tree order. Both are traceable; `pack_jit`/`unpack_jit` are their jitted forms for use outside jit."""

    def __init__(self, example: Any):
        leaves, self.treedef = jax.tree.flatten(example)
        self.shapes = [tuple(np.shape(x)) for x in leaves]
        self.dtypes = [jnp.dtype(x.dtype) for x in leaves]
        self.small = [len(s) <= 1 for s in self.shapes]
        self.buffer_dtypes = list(dict.fromkeys(d for d, s in zip(self.dtypes, self.small, strict=True) if s))
        self.pack_jit = jax.jit(self.pack)
        self.unpack_jit = jax.jit(self.unpack)

    def pack(self, tree: Any) -> list[jax.Array]:
        """The tree's small leaves concatenated per dtype, then its other leaves."""
        leaves = self.treedef.flatten_up_to(tree)
        kinds = list(zip(self.dtypes, self.small, strict=True))
        buffers = [
            jnp.concatenate([jnp.ravel(x) for x, (d, s) in zip(leaves, kinds, strict=True) if s and d == dtype])
            for dtype in self.buffer_dtypes
        ]
        return buffers + [x for x, (_, s) in zip(leaves, kinds, strict=True) if not s]

    def unpack(self, packed: list[jax.Array]) -> Any:
        """The tree `pack` was given, from its output."""
        buffers = dict(zip(self.buffer_dtypes, packed, strict=False))
        large = iter(packed[len(self.buffer_dtypes):])
        offsets = dict.fromkeys(self.buffer_dtypes, 0)
        leaves = []
        for shape, dtype, small in zip(self.shapes, self.dtypes, self.small, strict=True):
            if not small:
                leaves.append(next(large))
                continue
            size, start = int(np.prod(shape)), offsets[dtype]
            leaves.append(jax.lax.slice(buffers[dtype], (start,), (start + size,)).reshape(shape))
            offsets[dtype] = start + size
        return jax.tree.unflatten(self.treedef, leaves)

    def __len__(self) -> int:
        """How many arrays a packed state is."""
        return len(self.buffer_dtypes) + self.small.count(False)
