"""Paired in-process A/B of the ResNet train step: two variants compiled in one process, timed alternately.

Usage: python ab_step.py PAIR [--variant imagenet] [--batch-size 128] [--rounds 10] [--steps 3]

Each round times `--steps` steps of variant A, then of variant B, on one fixed batch already on the device
(the benchmark's "fixed" step); the ratio of each round's pair is taken, so machine drift between rounds
cancels. On this VM single benchmark runs differ by 10-40%, paired rounds by a few percent.

Pairs (B is the code as committed; A is the alternative, patched in while A's step is traced):
  dense        A: `chunked` wherever `auto` picks `dense` (1x1 and 2x2 maps)
  wino-kernel  A: Winograd's kernel transform G g G^T as the einsum it was before
  stem-dk      A: the stem conv's kernel gradient dropped (stop_gradient): what that gradient costs in the
               step; an ablation for measurement only, not a model anyone should train
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flax_resnet import config as config_lib
from flax_resnet import conv, models, train


@contextlib.contextmanager
def patched(module: object, name: str, value: object) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def chunked_for_dense() -> contextlib.AbstractContextManager:
    choose = conv.choose_lowering

    def choose_without_dense(*args, **kwargs):
        lowering = choose(*args, **kwargs)
        return "chunked" if lowering == "dense" else lowering

    return patched(conv, "choose_lowering", choose_without_dense)


def einsum_kernel_transform() -> contextlib.AbstractContextManager:
    def wino_kernel(kernel):
        g = jnp.asarray(conv._WINO_G, kernel.dtype)
        return jnp.einsum("ai,ijck,bj->abck", g, kernel, g).reshape(16, *kernel.shape[2:])

    return patched(conv, "_wino_kernel", wino_kernel)


def no_stem_kernel_gradient() -> contextlib.AbstractContextManager:
    conv2d = models.conv2d

    def frozen_stem(x, kernel, stride, padding, lowering="auto"):
        if kernel.shape[0] == 7:
            kernel = lax.stop_gradient(kernel)
        return conv2d(x, kernel, stride, padding, lowering)

    return patched(models, "conv2d", frozen_stem)


PAIRS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "dense": chunked_for_dense,
    "wino-kernel": einsum_kernel_transform,
    "stem-dk": no_stem_kernel_gradient,
}


def build(variant: str, batch_size: int, context: contextlib.AbstractContextManager):
    """The compiled fixed-batch train step (traced inside `context`), its state, batch and key."""
    with context:
        config = config_lib.make_config("article", arch="resnet18", variant=variant, batch_size=batch_size)
        model = models.create_model("resnet18", variant)
        tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
        graphdef, state = train.init_state(model, tx)
        step = train.make_train_step(graphdef, tx, config, augment=False)
        rng = np.random.default_rng(0)
        batch = {
            "image": jax.device_put(rng.integers(0, 255, (batch_size, 32, 32, 3), dtype=np.uint8)),
            "label": jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32)),
        }
        key = jax.random.key(0)
        return [step.lower(state, batch, key).compile(), state, batch, key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", choices=tuple(PAIRS))
    p.add_argument("--variant", default="imagenet", choices=models.VARIANTS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    runs = {"A": build(args.variant, args.batch_size, PAIRS[args.pair]()),
            "B": build(args.variant, args.batch_size, contextlib.nullcontext())}
    times: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for name, run in runs.items():
            compiled, state, batch, key = run
            state, _ = compiled(state, batch, key)  # one untimed step: the round starts from a settled state
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(args.steps):
                state, _ = compiled(state, batch, key)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / args.steps)
            run[1] = state
    print(f"pair {args.pair}, resnet18 {args.variant}, batch {args.batch_size}, {args.rounds} rounds x "
          f"{args.steps} steps, {jax.devices()[0].device_kind}, jax {jax.__version__}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = args.batch_size / med
        print(f"{name}: median {1000 * med:7.1f} ms/step (min {1000 * min(ts):.1f}) = {rate:6.1f} img/s")
    ratios = [a / b for a, b in zip(times["A"], times["B"], strict=True)]
    print(f"A/B time per round: median {statistics.median(ratios):.3f}, all {', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
