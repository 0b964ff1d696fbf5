"""Optimizer, learning-rate schedules and the pure, jit-compiled train/eval steps.

The model is split once into pure state (params, batch_stats) so that a step is a function
`(state, batch, rng) -> (state, metrics)` over pytrees that functional-JAX users can hold and transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from flax_resnet import data as data_lib
from flax_resnet.config import SCHEDULES, Config


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate per optimizer step for `config.schedule` over `config.epochs` epochs."""
    total = max(1, config.epochs * steps_per_epoch)
    lr = config.lr
    if config.schedule == "piecewise":
        boundaries = {int(round(f * total)): config.piecewise_factor for f in config.piecewise_boundaries}
        return optax.piecewise_constant_schedule(lr, boundaries)
    warmup = int(round(config.warmup_fraction * total))
    if config.schedule == "onecycle":
        # Linear warm-up from lr/25 to lr, then linear decay to 0 (triangular one-cycle).
        return optax.join_schedules(
            [optax.linear_schedule(lr / 25, lr, max(1, warmup)), optax.linear_schedule(lr, 0.0, total - warmup)],
            [warmup],
        )
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(lr / 25, lr, max(1, warmup), total, end_value=0.0)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid choices: {', '.join(SCHEDULES)}")


def make_optimizer(
    learning_rate: float | optax.Schedule, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 5e-4
) -> optax.GradientTransformation:
    """torch.optim.SGD semantics: weight decay added to the gradient *before* (Nesterov) momentum."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes, as one pytree."""

    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """Split the model once into its static graph and a TrainState of arrays."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """A model object holding `state`'s params and batch statistics (e.g. for export or predict)."""
    return nnx.merge(graphdef, state.params, state.batch_stats)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy in float32, with torch-style label smoothing."""
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Config, *, augment: bool = True
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted pure step `(state, batch, rng) -> (state, metrics)`; `state` is donated.

    `batch` holds uint8 NHWC `image` and int `label`; crop/flip/normalize happen here, on the device.
    """

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        images = batch["image"]
        if augment:
            images = data_lib.augment(rng, images)
        x = data_lib.normalize(images)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.batch_stats)
            model.train()
            logits = model(x)
            loss = cross_entropy(logits, batch["label"], config.label_smoothing).mean()
            return loss, (logits, nnx.state(model, nnx.BatchStat))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def make_eval_step(
    graphdef: nnx.GraphDef,
) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted eval-mode step over a padded batch: sums of loss and correct predictions, and the count.

    `batch["mask"]` is 1 for real examples and 0 for padding, so every test image counts exactly once.
    """

    def step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        model.eval()
        logits = model(data_lib.normalize(batch["image"]))
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss * mask),
            "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask),
            "logits": logits,
        }

    return jax.jit(step)


def resolve_dtype(name: str) -> str:
    """`auto` means bfloat16 on GPU/TPU and float32 on CPU; other names pass through."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def tree_size(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))
