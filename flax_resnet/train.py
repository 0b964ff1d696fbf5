"""Optimizer, learning-rate schedules and the pure, jit-compiled train/eval steps.

The model is split once into pure state (params, batch_stats) so that a step is a function
`(state, batch, rng) -> (state, metrics)` over pytrees that functional-JAX users can hold and transform.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax import lax

from flax_resnet import data as data_lib
from flax_resnet.config import (
    SCHEDULES,
    SETTING_FIELDS,
    Config,
    data_problem,
    differences,
    make_config,
    workdir_problem,
)
from flax_resnet.distributed import gather_from_processes, put_batch, to_host
from flax_resnet.errors import SAME_REQUEST_SECONDS, interrupt, one_line
from flax_resnet.machine import run_device
from flax_resnet.models import check_concrete, is_prng_key
from flax_resnet.packing import StatePacking


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate per optimizer step for `config.schedule` over `config.epochs` epochs."""
    total = max(1, config.epochs * steps_per_epoch)
    lr = config.lr
    if config.schedule == "piecewise":
        boundaries = {round(f * total): config.piecewise_factor for f in config.piecewise_boundaries}
        return optax.piecewise_constant_schedule(lr, boundaries)
    warmup = round(config.warmup_fraction * total)
    if config.schedule == "onecycle":
        # Linear warm-up from lr/25 to lr, then linear decay to 0 (triangular one-cycle).
        return optax.join_schedules(
            [optax.linear_schedule(lr / 25, lr, max(1, warmup)), optax.linear_schedule(lr, 0.0, total - warmup)],
            [warmup],
        )
    if config.schedule == "cosine":
        if total <= max(1, warmup):  # optax's own error would be about its decay_steps argument
            raise ValueError(f"the cosine schedule needs more than its {max(1, warmup)} warm-up step(s); "
                             f"this run has {total}")  # fmt: skip
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
    """Split the model once into its static graph and a TrainState of copies of its arrays: the step donates
    the state's buffers, which must not be the model's (it stays usable)."""
    check_concrete(model, "init_state")
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = jax.tree.map(jnp.copy, (params, batch_stats))
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """A model object holding copies of `state`'s params and batch statistics (e.g. for export or predict),
    usable after the step has donated `state`."""
    return nnx.merge(graphdef, *jax.tree.map(jnp.copy, (state.params, state.batch_stats)))


def apply_model(
    graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, x: jax.Array, *, train: bool
) -> tuple[jax.Array, nnx.State]:
    """The model as a pure function: `(logits, batch_stats)` for normalized NHWC `x`, with the BatchNorm
    statistics a train-mode call updates (unchanged in eval mode). Differentiable in `params` (`jax.grad`); the
    train step's loss calls it."""
    # copy=True: fresh Variables at this trace level, so BatchNorm may update its statistics under a transform.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    if train:
        model.train()
    else:
        model.eval()
    logits = model(x)
    return logits, nnx.state(model, nnx.BatchStat)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy in float32 (float64 for float64 logits), with torch-style label smoothing. A label
    outside 0..classes-1 has an all-zero target here; the steps report such a batch's loss as NaN (`_labels_fit`)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _labels_fit(labels: jax.Array, num_classes: int) -> jax.Array:
    """Per example: the label lies in 0..num_classes-1. The steps report a loss of NaN where one does not, which
    the trainer stops on: torch raises there, and the all-zero one-hot target is a finite loss that trains on
    nothing. Applied to reported values only, so the gradient computation is exactly what it is without it."""
    return (labels >= 0) & (labels < num_classes)


# fold_in tag of the cutout key: crop and flip keep their keys whether cutout is on or off. Not 0 or 1: with
# jax's partitionable threefry (the default), split(rng)[i] is fold_in(rng, i), the crop and flip keys.
CUTOUT_STREAM = 2


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Config, *, augment: bool = True
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted pure step `(state, batch, rng) -> (state, metrics)`; `state` is donated.

    `batch` holds uint8 NHWC `image` and int `label` of shape (N,); crop/flip/normalize happen here, on the
    device; `rng` is one PRNG key (`jax.random.key`, or a raw `PRNGKey`). Of `config` the step reads only
    `cutout` and `label_smoothing`: the learning rate, schedule, momentum and weight decay are `tx`'s
    (`make_tx(config)`, or any optax optimizer).
    """

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        _check_batch(batch, "train")
        _check_rng(rng)
        images = batch["image"]
        if augment:
            images = data_lib.augment(rng, images)
        x = data_lib.normalize(images)
        if augment and config.cutout:
            x = data_lib.cutout(jax.random.fold_in(rng, CUTOUT_STREAM), x, config.cutout)

        def loss_fn(params):
            logits, batch_stats = apply_model(graphdef, params, state.batch_stats, x, train=True)
            loss = cross_entropy(logits, batch["label"], config.label_smoothing).mean()
            return loss, (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": jnp.where(_labels_fit(batch["label"], logits.shape[-1]).all(), loss, jnp.nan),
            "accuracy": jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def _check_batch(batch: Mapping[str, jax.Array], which: str) -> None:
    """At trace time, so free per step. The steps normalize raw pixels themselves: an image batch that is
    already float (normalized by the caller) would be normalized twice without a word. Labels of shape (N, 1)
    or one-hot would broadcast against the logits into an N x N (or N x C) loss that trains on the wrong pairs."""
    keys = ("image", "label", "mask") if which == "eval" else ("image", "label")
    if not isinstance(batch, Mapping) or any(key not in batch for key in keys):
        got = f"keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(f"the {which} step takes a dict with keys {', '.join(map(repr, keys))}; got {got}")
    image, label = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    if not jnp.issubdtype(image.dtype, jnp.integer):
        raise TypeError(f"the {which} step takes raw integer pixels (uint8 NHWC) and normalizes them itself; got "
                        f"{image.dtype} images (already normalized? pass the uint8 pixels)")  # fmt: skip
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"the {which} step takes NHWC images with 3 channels, shape (N, H, W, 3); got shape "
                         f"{tuple(image.shape)}")  # fmt: skip
    if not jnp.issubdtype(label.dtype, jnp.integer):
        raise TypeError(f"the {which} step takes integer class labels, got {label.dtype}")
    for name in keys[1:]:
        shape = tuple(jnp.shape(batch[name]))
        if shape != image.shape[:1]:
            raise ValueError(f"the {which} step takes one {name} per image, shape ({image.shape[0]},) for "
                             f"{image.shape[0]} images; got shape {shape}")  # fmt: skip


def _check_rng(rng: Any) -> None:
    """At trace time: an int seed or a key array of several keys fails deep inside the augmentation."""
    if not is_prng_key(rng):
        got = f"{rng.dtype} of shape {tuple(rng.shape)}" if hasattr(rng, "shape") else type(rng).__name__
        raise TypeError(f"the train step takes one PRNG key, jax.random.key(seed); got {got}")


def make_eval_step(
    graphdef: nnx.GraphDef,
) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted eval-mode step over a padded batch: `loss_sum`, `correct` and `count` (sums over the real
    examples), and the per-example `logits` (N, classes), padding rows included (evaluate keeps them for flip TTA
    and the confusion matrix).

    `batch["mask"]` is 1 for real examples and 0 for padding, so every test image counts exactly once (padding
    may carry any label, -1 included: its loss is left out, not multiplied by 0).
    """

    def step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        _check_batch(batch, "eval")
        logits, _ = apply_model(graphdef, state.params, state.batch_stats, data_lib.normalize(batch["image"]),
                                train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = jnp.where(_labels_fit(batch["label"], logits.shape[-1]), cross_entropy(logits, batch["label"]), jnp.nan)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(jnp.where(mask > 0, loss * mask, 0.0)),
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


# ------------------------------------------------------------------------------------------------ the loop


class RunError(Exception):
    """A run that must stop with one user-facing line (mismatched workdir, non-finite loss, bad settings)."""


# Fields only a fresh run reads: a resumed run keeps those it started with (`_keep_start`).
START_KEYS = ("init_weights", "init_skip")
# Fields that must match to resume a workdir: all but the operational ones, where the run stops (--max-steps)
# and START_KEYS. Another model cannot continue from the checkpoints, and another seed, recipe or epoch count
# (which every schedule is a fraction of) would make config.json describe steps it did not take.
RESUME_KEYS = tuple(k for k in SETTING_FIELDS if k not in ("max_steps", *START_KEYS))
# Host fetches of the running metrics (progress bar, NaN check) happen at most this often, besides epoch ends
# and checkpoints: each one makes the host wait for the device to drain its queue of steps.
FETCH_SECONDS = 1.0
# Steps the host may queue ahead of the device. Dispatch is asynchronous and far faster than a CPU step: left
# unbounded, the host queued a whole epoch within a second, and a Ctrl-C was acted on only once the device had
# run all of it (a NaN is still seen at the next fetch, within FETCH_SECONDS). A few queued steps keep a GPU fed
# through host hiccups; more only delay a stop. scripts/benchmark.py dispatches without this bound.
MAX_IN_FLIGHT = 4


def check_workdir(workdir: str | Path, config: Config, keys: tuple[str, ...] = RESUME_KEYS) -> Config | None:
    """The config saved in `workdir`, or None; RunError if it differs from `config` in `keys` (call it only for a
    workdir with checkpoints to resume: a run that stopped before its first one starts afresh)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = Config.from_json(path.read_text())
    except (ValueError, TypeError) as e:
        raise RunError(
            f"{path}: unreadable run config ({e}); the checkpoints' metadata hold each step's config: restore "
            "this file from it or remove it to resume, or use another --workdir"
        ) from None
    diffs = differences(saved, config, keys)
    if diffs:
        # --dtype auto means bfloat16 on a GPU/TPU and float32 on a CPU: a run moved between them differs in it.
        dtype_differs = "dtype" in keys and saved.dtype != config.dtype
        moved = " (--dtype auto is bfloat16 on a GPU/TPU, float32 on a CPU)" if dtype_differs else ""
        raise RunError(
            f"{Path(workdir)} holds a run with other settings: {', '.join(diffs)}{moved}; refusing to resume (rerun "
            "with the run's own settings, its config.json, or use another --workdir)"
        )
    return saved


def check_step_geometry(meta: dict[str, Any], batch_size: int, n_train: int, steps_per_epoch: int, where: Path) -> None:
    """RunError unless a checkpoint's batch size and training-set size are this run's: its step count means
    epochs, schedule position and batch order only under those (e.g. a run of batch 512 stopped at epoch 10 of
    40 and resumed at batch 128 would restart its warm-up and run 4x the steps)."""
    saved_bs = meta.get("config", {}).get("batch_size", batch_size)
    saved_n = meta.get("train_images", n_train)  # checkpoints before 2026-12-04 record only the batch size
    if (saved_bs, saved_n) != (batch_size, n_train):
        saved_spe = meta.get("steps_per_epoch", saved_n // saved_bs)
        raise RunError(
            f"{where} was made with batch size {saved_bs} over {saved_n} training images ({saved_spe} steps per "
            f"epoch); this run has batch size {batch_size} over {n_train} ({steps_per_epoch}): its saved step "
            "would mean another epoch and learning rate; resume with the run's own --batch-size and data (its "
            "config.json) or use another --workdir"
        )


def held_out_mismatch(recorded: str | None, digest: str) -> str | None:
    """Why a `--holdout` run's held-out images (their recorded `data.image_set_digest`) are not the images of
    `digest`, or None if they are: scoring or training on other ones would mix trained and held-out images."""
    if recorded == digest:
        return None
    if recorded is None:
        return "the run predates held-out images chosen by their pixels (2026-12-05)"
    return "this data holds other images"


def check_data(meta: dict[str, Any], record: dict[str, Any], where: Path) -> None:
    """RunError unless a checkpoint's run used this data (`record`: `data.data_record`): resuming on other
    images would mix two data sets in one run's numbers, on another class order train with shifted labels."""
    why = data_lib.data_mismatch(meta, record)
    if why:
        raise RunError(
            f"{where} was trained on other data ({why}); resume with the run's own data (its config.json) or use "
            "another --workdir"
        )


def check_held_out(meta: dict[str, Any], digest: str | None, where: Path) -> None:
    """RunError unless a `--holdout` checkpoint held out these very images (`digest`; None: no holdout)."""
    why = None if digest is None else held_out_mismatch(meta.get("holdout_digest"), digest)
    if why:
        raise RunError(f"{where} held out other training images than this run would ({why}); use another --workdir")


def _new_model(config: Config) -> nnx.Module:
    from flax_resnet.models import create_model

    return create_model(
        config.arch,
        config.variant,
        config.num_classes,
        config.seed,
        dtype=resolve_dtype(config.dtype),
        conv_lowering=config.conv_lowering,  # type: ignore[arg-type]
        batch_norm=config.batch_norm,
    )


def check_initial_weights(config: Config, state_dict: Mapping[str, Any]) -> list[str]:
    """RunError in one line unless `state_dict` (`config.init_weights`, read) fits a fresh model of `config`
    but for `config.init_skip` (checked against its shapes without building it); the keys left at the seeded
    init."""
    from flax_resnet.convert import torch_shapes
    from flax_resnet.flags import match_init_weights

    model = nnx.eval_shape(lambda: _new_model(config))
    return match_init_weights(config, torch_shapes(model), state_dict, RunError)[1]


def _keep_start(config: Config, recorded: Mapping[str, Any], warn: Callable[[str], None]) -> Config:
    """`config` with the `init_weights`/`init_skip` of the run being resumed (`recorded`, its config as a dict):
    only a fresh run reads them, and config.json must keep saying where the run started; a note if they differ."""
    start = {key: recorded.get(key) for key in START_KEYS}
    start["init_skip"] = tuple(start["init_skip"] or ())
    if all(getattr(config, key) == value for key, value in start.items()):
        return config
    was = f"from {start['init_weights']}" if start["init_weights"] else "from the seeded init"
    warn(f"note: resuming a run that started {was}; --init-weights and --init-skip apply to a fresh run only")
    return dataclasses.replace(config, **start)


def build_state(
    config: Config, steps_per_epoch: int = 1, weights: Mapping[str, Any] | None = None
) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation, optax.Schedule]:
    """Fresh model + optimizer state for `config` (dtype already resolved): graphdef, state, tx, schedule.

    `weights` (a torch state dict that `check_initial_weights` accepts) replace the seeded init but for
    `config.init_skip`."""
    model = _new_model(config)
    if weights is not None:
        from flax_resnet.convert import load_torch_state_dict

        load_torch_state_dict(model, weights, skip=config.init_skip)
    tx, schedule = make_tx(config, steps_per_epoch)
    graphdef, state = init_state(model, tx)
    return graphdef, state, tx, schedule


def make_tx(config: Config, steps_per_epoch: int = 1) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The run's optimizer and its learning-rate schedule, from `config`'s recipe."""
    schedule = make_schedule(config, steps_per_epoch)
    return make_optimizer(schedule, config.momentum, config.nesterov, config.weight_decay), schedule


@dataclasses.dataclass
class LoadedRun:
    """A checkpoint (or weights file) loaded for evaluation/export: its config, class names, model graph and state.

    `path` is the checkpoint's step directory, or the weights file."""

    config: Config
    class_names: tuple[str, ...]
    graphdef: nnx.GraphDef
    state: TrainState
    step: int
    path: Path
    directory: Path  # where its outputs go: the run's workdir, or the weights file's folder
    holdout_digest: str | None = None  # `data.image_set_digest` of a --holdout run's held-out images

    def model(self) -> nnx.Module:
        """The model holding this checkpoint's parameters and statistics."""
        return merge_model(self.graphdef, self.state)


def load_run(path: str | Path, warn: Callable[[str], None] | None = None) -> LoadedRun:
    """Load a workdir's latest readable checkpoint, or one step directory; CheckpointError names the path.

    Also a torch_ref run's workdir (its model.safetensors) and a weights file whose metadata name the model
    (`convert.weights_metadata`: scripts/export.py's output), so that either framework's runs are evaluated,
    exported and used for prediction by the same code."""
    from flax_resnet.checkpoint import Checkpointer, CheckpointError, find_checkpoint

    if Path(path).is_file() or (Path(path) / "torch_options.json").is_file():
        return _load_weights_run(Path(path))
    warn = warn or (lambda line: print(line, file=sys.stderr))
    directory, step = find_checkpoint(path)
    ckpt = Checkpointer(directory, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{directory}: no finalized checkpoints")
    if step is not None and step not in steps:
        raise CheckpointError(f"{directory / str(step)}: not a finalized checkpoint")
    built: dict[str, tuple[Config, nnx.GraphDef, TrainState]] = {}

    def target_for(meta: dict[str, Any]) -> TrainState:
        """The restore target of the config recorded in a step's metadata (built once per config)."""
        where = directory / str(meta.get("step"))
        try:
            config = Config.from_json(json.dumps(meta["config"]))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{where}: metadata holds no valid config ({e})") from None
        names = meta.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != config.num_classes):
            raise CheckpointError(f"{where}: metadata's class names do not match its {config.num_classes} classes")
        key = config.to_json()
        if key not in built:
            try:
                # Only the state's structure matters here; any steps-per-epoch gives it, if the schedule is valid
                # (a cosine schedule needs more steps than its warm-up, which one step per epoch may not give).
                built[key] = (config, *build_state(config, int(meta.get("steps_per_epoch") or 1000))[:2])
            except (ValueError, TypeError) as e:  # e.g. an unknown arch or dtype: damaged metadata
                raise CheckpointError(f"{where}: metadata holds an unusable config ({e})") from None
        return built[key][2]

    try:
        if step is None:  # the latest readable step: damaged newer ones (metadata or arrays) are skipped
            result = ckpt.restore_latest(target_for, warn)
            assert result is not None
            state, meta = result
        else:
            state, meta = ckpt.restore(step, target_for)
    finally:
        ckpt.close()
    config, graphdef, _ = built[Config.from_json(json.dumps(meta["config"])).to_json()]
    names = tuple(meta.get("class_names") or [str(i) for i in range(config.num_classes)])
    at = int(meta["step"])
    where = directory / str(at)
    return LoadedRun(config, names, graphdef, state, at, where, directory.parent, meta.get("holdout_digest"))


def _load_weights_run(path: Path) -> LoadedRun:
    """`load_run` for a torch_ref workdir or a weights file: the model from the run's config.json or the file's
    metadata (this project's, `convert.weights_metadata`), its tensors loaded strictly, evaluated in float32."""
    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.convert import WEIGHTS_FORMAT, StateDictError, WeightsFileError, non_finite, read_safetensors

    torch_run = path.is_dir()
    file = path / "model.safetensors" if torch_run else path
    if torch_run and not file.is_file():
        raise CheckpointError(f"{path}: a torch_ref run with no model.safetensors yet (written at each epoch's end)")
    if file.suffix != ".safetensors":
        raise CheckpointError(
            f"{file}: not a run directory, checkpoint or .safetensors weights file (a .pt/.pth state dict does not "
            "name its model: load it into one you create with flax_resnet.load_torch_state_dict)"
        )
    try:
        weights, meta = read_safetensors(file)
    except WeightsFileError as e:
        raise CheckpointError(str(e)) from None
    problem = non_finite(weights)  # damaged bytes: evaluate scored "loss nan", export copied them, both exit 0
    if problem:
        raise CheckpointError(f"{file}: {problem}")
    if not torch_run and meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{file}: its metadata do not name the model as the files of scripts/export.py and torch_ref runs do "
            "(save_safetensors(..., weights_metadata(arch, variant, class_names, step)) writes them); or load it "
            "into a model you create with flax_resnet.load_torch_state_dict"
        )
    try:
        if torch_run:
            config = Config.from_json((path / "config.json").read_text())
        else:
            config = make_config(
                arch=meta["arch"], variant=meta["variant"], num_classes=int(meta["num_classes"]),
                holdout=int(meta.get("holdout", 0)),  # scored on its held-out images, as the run was
            )  # fmt: skip
        config = dataclasses.replace(config, dtype="float32", init_weights=None, init_skip=())
        graphdef, state = build_state(config, 1000, weights)[:2]  # any steps per epoch: only the structure counts
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
        step = int(meta["step"]) if "step" in meta else _last_logged_step(path) if torch_run else 0
    except StateDictError as e:
        raise CheckpointError(f"{file}: {e.summary()}") from None
    except (OSError, KeyError, ValueError, TypeError) as e:  # an unreadable config.json or metrics.jsonl, odd metadata
        raise CheckpointError(f"{file}: cannot tell which model it holds ({one_line(e)})") from None
    if names is not None and (
        not isinstance(names, list) or len(names) != config.num_classes or not all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{file}: metadata's class names are not the names of its {config.num_classes} classes")
    names = tuple(names or (str(i) for i in range(config.num_classes)))
    return LoadedRun(config, names, graphdef, state, step, file, file.parent, meta.get("holdout_digest"))


def _last_logged_step(workdir: Path) -> int:
    """The step of a run's last metrics.jsonl line (0 if none): a torch run's model.safetensors from before it
    recorded its step holds that epoch's weights."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").is_file() else []
    return max((int(json.loads(line)["step"]) for line in lines if line.strip()), default=0)


def make_eval_fn(graphdef: nnx.GraphDef, packing: StatePacking) -> Callable[..., dict[str, jax.Array]]:
    """Jitted `(packed, images, labels, idx, mask) -> sums`, `packed` being `packing.pack(state)`: gathers the
    batch on device, then make_eval_step. It takes the packed state, not the TrainState, for the host work
    per call (see `make_loop_step`)."""
    eval_step = make_eval_step(graphdef)

    @jax.jit
    def run(packed, images, labels, idx, mask):
        batch = {"image": images[idx], "label": labels[idx], "mask": mask}
        return eval_step(packing.unpack(packed), batch)

    return run


def evaluate(
    eval_fn: Callable[..., dict[str, jax.Array]],
    packed: list[jax.Array],
    images: jax.Array,
    labels: jax.Array,
    batch_size: int,
    mesh: Any,
    *,
    keep_logits: bool = False,
) -> dict[str, Any]:
    """Test loss/accuracy over every image exactly once (padded last batch, one compiled shape).

    `eval_fn` is `make_eval_fn(graphdef, packing)` and `packed` is `packing.pack_jit(state)`. With
    `keep_logits`, also returns the (n, classes) logits (float32 or wider) in dataset order. The images go in a fixed
    shuffled order, so that the first batch, whose logits are always returned (`first_logits` of the images
    `first_indices`, for predictions.png), mixes the classes of a test set stored class by class.
    """
    n = int(labels.shape[0])
    order = np.random.default_rng(0).permutation(n).astype(np.int32)
    idx, mask = data_lib.eval_batches(n, batch_size, order)
    sums, logits = [], []
    for i in range(len(idx)):
        out = eval_fn(packed, images, labels, put_batch(idx[i], mesh), put_batch(mask[i], mesh))
        sums.append((out["loss_sum"], out["correct"], out["count"]))
        if keep_logits or i == 0:
            logits.append(out["logits"])
    loss_sum, correct, count = (float(sum(np.asarray(s[j], np.float64) for s in sums)) for j in range(3))
    result: dict[str, Any] = {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}
    host_logits = [to_host(x) for x in logits]  # on many hosts, each holds only its part of the batch
    result["first_logits"] = host_logits[0][: min(n, batch_size)]
    result["first_indices"] = order[: min(n, batch_size)]
    if keep_logits:
        dtype = np.result_type(host_logits[0].dtype, np.float32)
        result["logits"] = np.empty((n, host_logits[0].shape[-1]), dtype)
        result["logits"][order] = np.concatenate(host_logits)[:n]
    return result


def logits_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy (no label smoothing) and accuracy of host logits, in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    labels = np.asarray(labels)
    return {
        "loss": 0.0 - float(log_p[np.arange(len(labels)), labels].mean()),  # 0.0, not -0.0, when perfect
        "accuracy": float(np.mean(np.argmax(z, -1) == labels)),
    }


def evaluate_flip_tta(
    eval_fn: Callable[..., dict[str, jax.Array]],
    packed: list[jax.Array],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mesh: Any,
    logits: np.ndarray | None = None,
) -> dict[str, float]:
    """Horizontal-flip test-time augmentation: loss and accuracy of the mean of the logits of each (host, NHWC)
    image and of its mirror image. `logits`: the plain ones, if `evaluate(..., keep_logits=True)` has them."""
    from flax_resnet.distributed import put_replicated

    def logits_of(x: np.ndarray) -> np.ndarray:
        put = put_replicated((np.ascontiguousarray(x), np.asarray(labels)), mesh)
        return evaluate(eval_fn, packed, *put, batch_size, mesh, keep_logits=True)["logits"]

    plain = logits if logits is not None else logits_of(images)
    return logits_metrics((plain + logits_of(images[:, :, ::-1])) / 2, labels)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so it stops with a checkpoint.

    A second signal gives up at once (KeyboardInterrupt); while a checkpoint is being written
    (`flag["saving"]`) it sets `flag["abort"]` instead, and the save raises once it is complete. The previous
    handlers come back on exit.
    """
    flag: dict[str, Any] = {"signal": None, "saving": False, "abort": None, "at": 0.0}

    def handler(signum, frame):
        if flag["signal"] is None:
            flag["signal"], flag["at"] = signum, time.monotonic()
            print(f"signal {signum}: stopping with a checkpoint (again: stop at once)", file=sys.stderr, flush=True)
        elif signum == flag["signal"] == signal.SIGTERM and time.monotonic() - flag["at"] < SAME_REQUEST_SECONDS:
            return  # the same request twice (a job's SIGTERM to its group, passed on by a parent): one stop
        elif flag["saving"]:
            flag["abort"] = signum
        else:
            raise interrupt(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handler, the loop just runs
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler installed from C, which Python cannot put back
                signal.signal(sig, old)


# The running sums of an epoch, saved with each checkpoint: "untimed" counts the images of compile steps, which
# are outside `seconds` and so outside the epoch's img/s.
EPOCH_SUMS = {"loss": 0.0, "correct": 0.0, "count": 0, "seconds": 0.0, "untimed": 0}


def loop_sums(loss: float = 0.0, correct: float = 0.0) -> dict[str, np.ndarray]:
    """Host-side initial running sums for `make_loop_step` (a resumed epoch starts from its saved sums)."""
    return {"loss": np.float32(loss), "correct": np.float32(correct), "first_bad": np.int32(-1)}


def make_loop_step(train_step: Callable, steps_per_epoch: int, packing: StatePacking) -> Callable:
    """The training loop's per-step call, with no host work per step beyond the call itself: pick this step's
    row of the epoch's device-resident index array, gather the batch from the device-resident dataset, run
    `train_step` (augmentation inside) and add loss/correct to device-side running sums (no host sync).

    `(packed, sums, images, labels, order, base_key) -> (packed, sums)`, jitted, donating packed;
    `packed` is `packing.pack(state)` (flax_resnet/packing.py: the TrainState as a few arrays). Its weight tensors
    are `state`'s own arrays, not copies, so the first call consumes `state` as well: go on from
    `packing.unpack(packed)`. Passing the packed state
    instead of the state is what keeps the call cheap: jit's host work grows with the number of arrays and
    is larger still for the TrainState pytree of nnx.State dicts, and a small GPU step (the article recipe's
    batch of 128) is host-bound (`scripts/benchmark.py` reports both calls' host time).
    `order` is the epoch's (steps_per_epoch, batch) example indices (`data.train_batch_indices`); the row is
    `state.step % steps_per_epoch` and the augmentation key `fold_in(base_key, state.step)`, both computed on
    the device from the global step, so a resumed run continues exactly. sums holds float32 `loss`,
    `correct` and int32 `first_bad` (the first step with a non-finite loss, else -1).
    scripts/benchmark.py times this same function, so its input-pipeline numbers are the trainer's (it queues
    steps without the loop's MAX_IN_FLIGHT bound: on this CPU the bound changed 150-step epochs by less than the
    machine's noise, 22.7-29.9 s with or without it; on a GPU it is unmeasured).
    """

    # sums are not donated: the trainer waits on an earlier step's sums to bound its queue (MAX_IN_FLIGHT).
    @functools.partial(jax.jit, donate_argnums=0)
    def loop_step(packed, sums, images, labels, order, base_key):
        state = packing.unpack(packed)
        idx = lax.dynamic_index_in_dim(order, state.step % steps_per_epoch, keepdims=False)
        rng = jax.random.fold_in(base_key, state.step)
        state, metrics = train_step(state, {"image": images[idx], "label": labels[idx]}, rng)
        bad = ~jnp.isfinite(metrics["loss"])
        sums = {
            "loss": sums["loss"] + metrics["loss"],
            "correct": sums["correct"] + metrics["accuracy"] * idx.shape[0],
            "first_bad": jnp.where((sums["first_bad"] < 0) & bad, state.step, sums["first_bad"]),
        }
        return packing.pack(state), sums

    return loop_step


def train(config: Config, *, stream: Any = None) -> dict[str, Any]:
    """Run (or resume) a training run in `config.workdir`; return the final metrics.

    Writes config.json, metrics.jsonl, TensorBoard events, curves.png, predictions.png and checkpoints/.
    Raises data.DataError, checkpoint.CheckpointError or RunError (one-line messages) for user problems, and
    distributed.DistributedError when the processes of a multi-host run were given other settings or data.
    """
    from flax_resnet.checkpoint import Checkpointer, has_step_dirs
    from flax_resnet.distributed import check_same_on_every_process, make_mesh, put_batch, put_replicated
    from flax_resnet.flags import init_weights_line, read_init_weights
    from flax_resnet.reporting import Reporter, format_final, truncate_metrics

    t_start = time.time()
    is_main = jax.process_index() == 0
    stream = stream if stream is not None else sys.stdout
    workdir = Path(config.workdir)
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype))
    host_local = ("workdir", "data", "data_dir", "progress", "init_weights")  # paths may differ between hosts
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in host_local}
    check_same_on_every_process(settings, "settings")
    problem = workdir_problem(workdir)
    if problem:
        raise RunError(problem)
    resuming = has_step_dirs(workdir / "checkpoints")  # then the checkpoint holds the weights, not the file
    if (workdir / "torch_options.json").is_file():
        raise RunError(f"{workdir} holds a torch run (torch_options.json); give the JAX run its own --workdir")
    saved = None
    if resuming:  # before loading any data; num_classes comes from the data
        saved = check_workdir(workdir, config, tuple(k for k in RESUME_KEYS if k != "num_classes"))
    init_state_dict = read_init_weights(config, RunError) if config.init_weights and not resuming else None
    dataset = data_lib.hold_out(data_lib.load_dataset(config.data, config.data_dir), config.holdout)
    config = dataclasses.replace(config, num_classes=len(dataset.class_names))
    problem = data_problem(config, dataset.train_images.shape)
    if problem:
        raise RunError(problem)
    if saved is not None and saved.num_classes != config.num_classes:  # the data's class count, not a flag
        raise RunError(
            f"{workdir} holds a run on {saved.num_classes} classes; this data has {config.num_classes} "
            f"({data_lib.name_list(dataset.class_names)}): resume with the run's own data (its config.json) or use "
            "another --workdir"
        )
    data_seen = data_lib.data_record(dataset)
    check_same_on_every_process(data_seen, "data")  # another copy on each host is fine, other images are not
    if init_state_dict is not None and jax.process_count() > 1:  # each process reads its own copy of the file
        digest = hashlib.blake2b(digest_size=16)
        for key in sorted(init_state_dict):
            digest.update(key.encode() + np.ascontiguousarray(init_state_dict[key]).tobytes())
        check_same_on_every_process({"init_weights": digest.hexdigest()}, "--init-weights contents")
    holdout_digest = data_seen["test_digest"] if config.holdout else None  # the held-out images are its test split

    mesh = make_mesh()
    n_train = len(dataset.train_labels)
    bs = config.batch_size
    if bs % mesh.size:
        raise RunError(f"--batch-size {bs} does not split over {mesh.size} devices")
    steps_per_epoch = n_train // bs
    if steps_per_epoch == 0:
        raise RunError(f"--batch-size {bs} is larger than the {n_train} training images")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    every = config.checkpoint_every or steps_per_epoch
    try:
        make_schedule(config, steps_per_epoch)  # e.g. a cosine schedule too short to decay: before any file is written
    except ValueError as e:
        raise RunError(str(e)) from None
    init_kept = None if init_state_dict is None else check_initial_weights(config, init_state_dict)  # before writes

    reporter = Reporter(workdir, progress=config.progress, write=is_main, stream=stream, holdout=config.holdout)
    warn = (lambda line: print(line, file=sys.stderr, flush=True)) if is_main else (lambda line: None)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        if saved is not None:
            changed = [
                f"{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}"
                for f in dataclasses.fields(Config)
                if getattr(saved, f.name) != getattr(config, f.name) and f.name not in START_KEYS  # see _keep_start
            ]
            if changed:
                warn(f"note: resuming with changed settings: {', '.join(changed)}")
    devices = jax.devices()
    kind = devices[0].device_kind
    reporter.print(f"jax {jax.__version__} on {len(devices)} x {kind} ({jax.process_count()} process(es))")
    device = run_device(devices[0].platform, kind, len(devices))  # each epoch's record names it: the results table
    reporter.print("config: " + json.dumps(dataclasses.asdict(config), sort_keys=True))

    graphdef, state, tx, schedule = build_state(config, steps_per_epoch, init_state_dict)
    state = put_replicated(state, mesh)
    ckpt = Checkpointer(workdir / "checkpoints")
    acc = dict(EPOCH_SUMS)
    restored = ckpt.restore_latest(state, warn, quarantine=workdir / "checkpoints-corrupt")
    step = 0
    if restored is None and config.init_weights:
        if init_kept is None:  # numbered folders that orbax does not count as saves: a fresh start after all
            init_state_dict = read_init_weights(config, RunError)
            init_kept = check_initial_weights(config, init_state_dict)
            graphdef, state, tx, schedule = build_state(config, steps_per_epoch, init_state_dict)
            state = put_replicated(state, mesh)
        reporter.print(init_weights_line(config, init_kept))
    if restored is not None:
        state, meta = restored
        config = _keep_start(config, meta.get("config", {}), warn)
        step = int(meta["step"])
        check_held_out(meta, holdout_digest, ckpt.step_dir(step))  # first: other held-out images differ in both
        check_data(meta, data_seen, ckpt.step_dir(step))  # before the geometry: other data explains another size
        check_step_geometry(meta, bs, n_train, steps_per_epoch, ckpt.step_dir(step))
        if step > total_steps:  # saving this config would label the run's epochs and metrics wrongly
            limit = f"--epochs {config.epochs}" + (f", --max-steps {config.max_steps}" if config.max_steps else "")
            raise RunError(
                f"{ckpt.step_dir(step)} is past this run's end (step {total_steps}: {limit}): nothing to train; "
                "rerun with the run's own settings (its config.json) or use another --workdir"
            )
        acc = dict(meta.get("epoch_sums", acc))
        reporter.print(f"resuming from checkpoint step {step} ({ckpt.step_dir(step)})")
        was = (meta.get("devices"), meta.get("processes"))  # None in checkpoints from before 2026-12-06
        if was[0] is not None and was != (mesh.size, jax.process_count()):
            warn(f"note: resuming on {mesh.size} device(s) in {jax.process_count()} process(es); step {step} was "
                 f"saved by a run on {was[0]} in {was[1]}: the same function, with other rounding")  # fmt: skip
    if is_main:
        config.save(workdir / "config.json")
    history = truncate_metrics(workdir / "metrics.jsonl", step, finished=step >= total_steps) if is_main else []

    images = put_replicated(dataset.train_images, mesh)
    labels = put_replicated(dataset.train_labels, mesh)
    test_images = put_replicated(dataset.test_images, mesh)
    test_labels = put_replicated(dataset.test_labels, mesh)
    train_step = make_train_step(graphdef, tx, config)
    packing = StatePacking(state)
    eval_fn = make_eval_fn(graphdef, packing)
    base_key = jax.random.key(config.seed)

    run_step = make_loop_step(train_step, steps_per_epoch, packing)

    @jax.jit
    def all_finite(packed):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in packed if jnp.issubdtype(x.dtype, jnp.floating)]))

    def new_sums(loss: float, correct: float):
        """Device-side running sums of the epoch, starting from the (float32) sums of a resumed epoch."""
        return put_replicated(loop_sums(loss, correct), mesh)

    def fetch(sums, pending_steps):
        """Host view of the running sums; raises RunError at the first non-finite loss."""
        host = jax.device_get(sums)
        if int(host["first_bad"]) >= 0:
            bad = int(host["first_bad"])
            last = ckpt.latest_step()
            kept = f"last good checkpoint: step {last} ({ckpt.step_dir(last)})" if last is not None else "no checkpoint"
            raise RunError(
                f"loss is not finite (nan/inf) at step {bad} (epoch {(bad - 1) // steps_per_epoch + 1}); "
                f"stopping; {kept}"
            )
        return {
            "loss": float(host["loss"]),
            "correct": float(host["correct"]),
            "count": acc["count"] + pending_steps * bs,
            "untimed": untimed,
        }

    def save(step, packed, epoch_sums):
        if not bool(all_finite(packed)):
            last = ckpt.latest_step()
            raise RunError(
                f"state is not finite (nan/inf) after step {step}; not saving it; last good checkpoint: step {last}"
            )
        meta = {
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "train_images": n_train,
            "config": dataclasses.asdict(config),
            **data_seen,  # class_names and the splits' digests
            "epoch_sums": epoch_sums,
            "devices": mesh.size,  # a resume on another count is noted (the same function, other rounding)
            "processes": jax.process_count(),
        }
        if holdout_digest is not None:
            meta["holdout_digest"] = holdout_digest
        nonlocal saved_at
        stop["saving"] = True
        try:
            ckpt.save(step, packing.unpack_jit(packed), meta)
        finally:
            stop["saving"] = False
        saved_at = time.time()
        if stop["abort"]:  # a second signal came during the save: stop at once, now that it is complete
            raise interrupt(stop["abort"])

    signals = contextlib.ExitStack()
    stop = signals.enter_context(_stop_on_signals())

    def stop_requested(boundary: bool) -> bool:
        """Whether to stop for a signal. With one process: as soon as one came. With several: only at
        checkpoint and epoch boundaries, which every process reaches at the same step, and if one came to any
        of them; a process stopping alone mid-interval would leave its peers waiting in collectives."""
        if jax.process_count() == 1:
            return stop["signal"] is not None
        if not boundary:
            return False
        signum = max_over_processes(stop["signal"] or 0)
        stop["signal"] = stop["signal"] or signum or None
        return signum != 0

    compiled = False
    last_saved = step
    saved_at = recorded_at = time.time()  # epoch-end checkpoints are throttled from the start
    record: dict[str, Any] | None = None
    stopped = "done"
    epochs_total = -(-total_steps // steps_per_epoch)
    packed = packing.pack_jit(state)  # the loop carries the packed state (make_loop_step), unpacked only to
    del state  # save; arrays it shares with `state` are donated by the first step
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            order = put_batch(data_lib.train_batch_indices(config.seed, epoch, n_train, bs), mesh, axis=1)
            first = step - epoch * steps_per_epoch
            bar = reporter.epoch_bar(epoch + 1, epochs_total, steps_per_epoch, first)
            sums, pending = new_sums(acc["loss"], acc["correct"]), 0
            untimed = acc.get("untimed", 0)  # checkpoints before 2026-11-28 lack it
            counted_at_t0 = acc["count"]
            t0 = last_fetch = time.time()
            in_flight: collections.deque = collections.deque()  # the queued steps' sums, oldest first
            for i in range(first, steps_per_epoch):
                packed, sums = run_step(packed, sums, images, labels, order, base_key)
                in_flight.append(sums)
                if len(in_flight) > MAX_IN_FLIGHT:
                    jax.block_until_ready(in_flight.popleft())
                if not compiled:  # keep compilation out of the epoch time and img/s
                    jax.block_until_ready(sums)
                    compiled = True
                    reporter.print(f"first step (compilation) took {time.time() - t0:.1f}s")
                    t0 = time.time()
                    untimed += bs
                    counted_at_t0 += bs
                step += 1
                pending += 1
                end_epoch = i == steps_per_epoch - 1
                # The final checkpoint of a run is written after its metrics line (below), never before it.
                requested = stop_requested(step % every == 0 or end_epoch)
                stopping = step >= total_steps or requested
                due = step % every == 0 and not stopping
                if time.time() - last_fetch >= FETCH_SECONDS or due or end_epoch or stopping:
                    now = fetch(sums, pending)
                    last_fetch = time.time()
                    bar.update(step - epoch * steps_per_epoch - bar.n)
                    seconds = acc["seconds"] + time.time() - t0
                    bar.set_postfix(
                        loss=f"{now['loss'] / max(1, now['count'] // bs):.3f}",
                        acc=f"{100 * now['correct'] / max(1, now['count']):.1f}%",
                        img_s=f"{(now['count'] - counted_at_t0) / max(1e-9, time.time() - t0):.0f}",
                    )
                    if due and not end_epoch and step != last_saved:
                        saving_from = time.time()
                        save(step, packed, dict(now, seconds=seconds))
                        last_saved = step
                        t0 += time.time() - saving_from  # epoch_seconds and img/s time the steps alone
                if stopping:
                    break
            bar.close()
            now = fetch(sums, pending)
            seconds = acc["seconds"] + time.time() - t0
            complete = step % steps_per_epoch == 0
            if complete or stopping:
                finished = step == config.epochs * steps_per_epoch  # the recipe's end: also flip TTA
                ev = evaluate(eval_fn, packed, test_images, test_labels, bs, mesh, keep_logits=finished)
                n_steps = max(1, now["count"] // bs)
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": float(schedule(step - 1)),
                    "train_loss": now["loss"] / n_steps,
                    "train_acc": now["correct"] / max(1, now["count"]),
                    "test_loss": ev["loss"],
                    "test_acc": ev["accuracy"],
                    "epoch_seconds": seconds,
                    "images_per_second": (now["count"] - now["untimed"]) / max(seconds, 1e-9),
                    "complete": complete,
                    # since the previous record (the first: since the loop began, compilation included): the
                    # epoch plus the work around it (evaluation, checkpoint, plots), which epoch_seconds omits
                    "wall_seconds": time.time() - recorded_at,
                    "device": device,
                }
                recorded_at = time.time()
                if finished:
                    tta = evaluate_flip_tta(
                        eval_fn, packed, dataset.test_images, dataset.test_labels, bs, mesh, ev["logits"]
                    )
                    record.update(test_loss_flip=tta["loss"], test_acc_flip=tta["accuracy"])
                if is_main:  # the plots at most every PLOT_SECONDS (reporting.py), and at the end
                    path = reporter.workdir / "predictions.png"
                    predictions = functools.partial(_plot_predictions, path, ev, dataset)
                    reporter.log_epoch(record, history, force_plot=finished or stopping, also_plot=predictions)
                    history.append(record)
            if complete:
                acc = dict(EPOCH_SUMS)
                asked = config.checkpoint_every is not None and step % config.checkpoint_every == 0
                # on all processes or none: a save is a collective
                due = max_over_processes(int(time.time() - saved_at >= config.checkpoint_seconds))
                if step != last_saved and (asked or due):
                    save(step, packed, acc)
                    last_saved = step
            else:
                acc = dict(now, seconds=seconds)
                if step != last_saved:
                    save(step, packed, acc)
                    last_saved = step
            if requested or stop_requested(True):  # also a signal during this evaluation or save
                if step < total_steps:  # a signal after the last step changes nothing
                    stopped = f"signal {stop['signal']}"
                break
        if step != last_saved:  # the last epochs' (checkpoint_seconds), or nothing left to run (e.g. resumed
            save(step, packed, acc)  # a finished run with larger max-steps)
            last_saved = step
        reporter.flush_plots()  # the last redraw was before the last epoch
    finally:
        signals.close()
        ckpt.close()
        reporter.close()
    if config.max_steps is not None and step >= config.max_steps and step < config.epochs * steps_per_epoch:
        stopped = "max_steps"
    if record is None:
        history = [r for r in history if r["step"] == step]
        record = history[-1] if history else None
    result = {"step": step, "stopped": stopped, "workdir": str(workdir), "seconds": time.time() - t_start}
    if record is not None:
        keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_loss_flip", "test_acc_flip")
        result.update({k: record[k] for k in keys if k in record})
    if stopped.startswith("signal"):
        reporter.print(f"stopped by {stopped} at step {step} of {total_steps}, checkpoint saved; "
                       "the same command resumes")  # fmt: skip
    elif record is not None:
        reporter.print(format_final(record, config.holdout))
    return result


def max_over_processes(value: int) -> int:
    """The largest of each process's `value` (a collective: every process must call it); itself on one."""
    return int(gather_from_processes([value]).max())


def _plot_predictions(path: Path, ev: dict[str, Any], dataset: data_lib.Dataset) -> None:
    """predictions.png from the first evaluation batch (up to 32 test images, in `evaluate`'s shuffled order)."""
    from flax_resnet.reporting import plot_predictions

    shown = ev["first_indices"][:32]
    preds = np.argmax(ev["first_logits"][: len(shown)], -1)
    plot_predictions(dataset.test_images[shown], dataset.test_labels[shown], preds, dataset.class_names, path)
