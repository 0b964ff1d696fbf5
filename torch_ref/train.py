"""PyTorch reference trainer: the same recipes, data, batch order and schedules as the JAX trainer.

It exists to answer "does the Flax trainer train as well as plain PyTorch does on the same recipe?": one
`flax_resnet.config.Config`, the dataset from `flax_resnet.data.load_dataset` placed on the device once,
`flax_resnet.data.train_batch_indices` for the batch order, augmentation as batched tensor ops, torch SGD with
the learning rate of `flax_resnet.train.make_schedule` set before every step. The workdir gets the same
`config.json` and `metrics.jsonl` as the JAX trainer and a `model.safetensors` state dict that
`flax_resnet.load_weights_file` + `load_torch_state_dict` load into the Flax model. There is no resume: a
workdir holding a torch run is refused (finished with the same config: nothing to do) unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from flax_resnet import data as data_lib
from flax_resnet.config import SCHEDULES, Config, data_problem, differences, workdir_problem
from flax_resnet.convert import WeightsFileError, read_safetensors, save_safetensors, weights_metadata
from flax_resnet.flags import init_weights_line, match_init_weights, read_init_weights
from flax_resnet.machine import run_device
from flax_resnet.reporting import Reporter, format_final
from torch_ref import data as tdata
from torch_ref.models import create_model


class TrainError(Exception):
    """User-facing training problem (e.g. a batch larger than the dataset); str(e) is one line."""


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    """Torch-only execution choices; they change speed/precision, not the recipe (saved as torch_options.json)."""

    device: str = "cpu"
    channels_last: bool = False
    amp: bool = False  # bfloat16 autocast for the forward pass (meant for cuda)
    compile: bool = False  # torch.compile the model


def total_steps(config: Config, steps_per_epoch: int) -> int:
    """Length of the schedule in optimizer steps (as in make_schedule: at least 1)."""
    return max(1, config.epochs * steps_per_epoch)


def lr_at(config: Config, steps_per_epoch: int, step: int) -> float:
    """Learning rate for optimizer step `step` (0-based), in float64: the schedule of make_schedule, by hand.

    onecycle: linear lr/25 -> lr over the warm-up, then linear lr -> 0; cosine: the same warm-up, then a half
    cosine to 0 at the last step; piecewise: lr times `piecewise_factor` from each boundary on.
    """
    total = total_steps(config, steps_per_epoch)
    lr = config.lr
    if config.schedule == "piecewise":
        # A dict as in make_schedule: fractions that round to the same step count once.
        boundaries = {round(f * total): config.piecewise_factor for f in config.piecewise_boundaries}
        value = lr
        for boundary, factor in sorted(boundaries.items()):
            if step >= boundary:
                value *= factor
        return value
    warmup = round(config.warmup_fraction * total)
    if config.schedule == "onecycle":
        if step < warmup:
            return _linear(lr / 25, lr, max(1, warmup), step)
        return _linear(lr, 0.0, total - warmup, step - warmup)
    if config.schedule == "cosine":
        warmup = max(1, warmup)
        decay = total - warmup
        if decay <= 0:
            raise ValueError(f"the cosine schedule needs more than its {warmup} warm-up step(s); this run has {total}")
        if step < warmup:
            return _linear(lr / 25, lr, warmup, step)
        t = min(step - warmup, decay)
        return lr * 0.5 * (1.0 + math.cos(math.pi * t / decay))
    raise ValueError(f"unknown schedule {config.schedule!r}; valid choices: {', '.join(SCHEDULES)}")


def _linear(start: float, end: float, steps: int, t: int) -> float:
    """`start` -> `end` linearly over `steps` steps, then held at `end` (held at `start` when steps <= 0)."""
    if steps <= 0:
        return start
    t = min(max(t, 0), steps)
    return (start - end) * (1.0 - t / steps) + end


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.SGD:
    """torch SGD with the config's momentum / Nesterov / weight decay (decay added to the gradient)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov and config.momentum > 0,  # as make_optimizer: no momentum, no Nesterov
    )


def _autocast(options: TorchOptions, device: torch.device) -> contextlib.AbstractContextManager:
    if options.amp:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(x: torch.Tensor, options: TorchOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    options: TorchOptions | None = None,
    *,
    flip_tta: bool = False,
) -> dict[str, float]:
    """Eval-mode mean cross-entropy (no label smoothing) and accuracy over every image once, in order.

    With `flip_tta`, also `loss_flip`/`accuracy_flip`: those of the mean logits of each image and its mirror.
    """
    options = options or TorchOptions(device=str(images.device))
    was_training = model.training
    model.eval()
    sums = {k: torch.zeros((), dtype=torch.float64, device=images.device) for k in ("loss", "correct")}
    if flip_tta:
        sums.update({k + "_flip": torch.zeros_like(sums[k]) for k in ("loss", "correct")})

    def accumulate(logits: torch.Tensor, y: torch.Tensor, suffix: str = "") -> None:
        sums["loss" + suffix] += F.cross_entropy(logits, y, reduction="sum").double()
        sums["correct" + suffix] += (logits.argmax(dim=1) == y).sum()

    for start in range(0, len(images), batch_size):
        x = tdata.normalize(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        with _autocast(options, images.device):
            logits = model(_prepare(x, options))
            mirrored = model(_prepare(x.flip(3), options)) if flip_tta else None
        accumulate(logits.float(), y)
        if mirrored is not None:
            accumulate((logits.float() + mirrored.float()) / 2, y, "_flip")
    model.train(was_training)
    n = len(images)
    result = {"loss": float(sums["loss"]) / n, "accuracy": int(sums["correct"]) / n}
    if flip_tta:
        result.update(loss_flip=float(sums["loss_flip"]) / n, accuracy_flip=int(sums["correct_flip"]) / n)
    return result


def save_state_dict(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state dict as .safetensors atomically (the one writer both frameworks use), with
    `metadata` (`convert.weights_metadata`: what makes the file usable on its own) in its header."""
    state = {k: v.detach().to("cpu").contiguous().numpy() for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


RUN_FILES = ("metrics.jsonl", "model.safetensors", "curves.png", "tensorboard")  # what a run writes besides configs


def _holds_run(workdir: Path) -> bool:
    """Whether `workdir` holds a torch run's files (finished or not)."""
    return any((workdir / name).exists() for name in ("torch_options.json", *RUN_FILES[:2]))


def _previous_run(
    workdir: Path, config: Config, steps_per_epoch: int, record: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]] | None, bool, list[str]] | None:
    """The metrics of the torch run already in `workdir` (None if there is none; `None` metrics when its files
    cannot be read: nothing is known of it); whether it is this config's run, finished (rerunning a finished
    command then has nothing to do); and the settings it differs in, its data included where `record`
    (`data.data_record`) is given and its model.safetensors records it."""
    if not _holds_run(workdir):
        return None
    try:
        saved = Config.from_json((workdir / "config.json").read_text())
        text = (workdir / "metrics.jsonl").read_text()
        history = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, TypeError):
        return None, False, []
    last = total_steps(config, steps_per_epoch)
    if config.max_steps is not None:
        last = min(last, config.max_steps)
    # This run, if it differs only in where things are (e.g. another --data-dir) or how often it reports.
    diffs = differences(saved, config)
    epoch_rows = [r for r in history if isinstance(r, dict) and r.get("complete", True) and r.get("epoch")]
    saved_spe = epoch_rows[0]["step"] // epoch_rows[0]["epoch"] if epoch_rows else steps_per_epoch
    if saved_spe != steps_per_epoch and saved.batch_size == config.batch_size:  # same flags, another data set
        diffs.append(f"steps per epoch {saved_spe} (this run: {steps_per_epoch}; other training data)")
    elif record is not None and (workdir / RUN_FILES[1]).exists():  # the same step count over other data?
        try:
            meta: dict[str, Any] = read_safetensors(workdir / RUN_FILES[1])[1]
            meta["class_names"] = json.loads(meta["class_names"]) if "class_names" in meta else None
        except (WeightsFileError, ValueError):
            meta = {}
        why = data_lib.data_mismatch(meta, record)
        if why:
            diffs.append(f"data: {why}")
    finished = bool(history) and history[-1]["step"] == last and (workdir / RUN_FILES[1]).exists()
    return history, not diffs and finished, diffs


def _load_initial_weights(model: nn.Module, config: Config, state_dict: dict[str, Any]) -> list[str]:
    """Load `state_dict` (`config.init_weights`, read) into `model` but for `config.init_skip`, checked as the
    JAX trainer checks it; returns the keys left at the seeded init. TrainError in one line."""
    own = model.state_dict()
    weights, kept = match_init_weights(config, {k: tuple(v.shape) for k, v in own.items()}, state_dict, TrainError)
    model.load_state_dict({**own, **{k: torch.tensor(v) for k, v in weights.items()}})  # strict: every key
    return kept


def train(
    config: Config, options: TorchOptions, *, out: TextIO | None = None, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Run the whole training described by `config`; returns the metrics rows also written to metrics.jsonl.

    A workdir that holds a torch run is refused, so that no finished work is lost by a rerun, unless it is this
    config's run and finished (returns its rows, trains nothing) or `overwrite` (its files are removed first).
    Raises data.DataError / TrainError for user errors (one-line messages).
    """
    device = torch.device(options.device)
    workdir = Path(config.workdir)
    problem = workdir_problem(workdir)  # cheap checks before loading any data
    if problem:
        raise TrainError(problem)
    if (workdir / "checkpoints").is_dir():
        raise TrainError(f"{workdir} holds a JAX run (checkpoints/); give the torch run its own --workdir")
    # Read only for a run that will train: a finished run's own command has nothing to do, even if its weights
    # file has moved since, and another run in the workdir is refused below anyway.
    trains = overwrite or not _holds_run(workdir)
    init_state_dict = read_init_weights(config, TrainError) if config.init_weights and trains else None
    dataset = data_lib.hold_out(data_lib.load_dataset(config.data, config.data_dir), config.holdout)
    data_seen = data_lib.data_record(dataset)
    holdout_digest = data_seen["test_digest"] if config.holdout else None  # the held-out images are its test split
    # The model's output size follows the dataset; the amp flag is what "dtype" means for this trainer.
    config = dataclasses.replace(
        config, num_classes=len(dataset.class_names), dtype="bfloat16" if options.amp else "float32"
    )
    problem = data_problem(config, dataset.train_images.shape)
    if problem:
        raise TrainError(problem)
    n_train = len(dataset.train_images)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise TrainError(f"batch size {config.batch_size} is larger than the {n_train} training images")
    try:
        lr_at(config, steps_per_epoch, 0)  # e.g. a cosine schedule too short to decay is a user error
    except ValueError as e:
        raise TrainError(str(e)) from None
    torch.manual_seed(config.seed)
    model = create_model(config.arch, config.variant, config.num_classes)
    kept = [] if init_state_dict is None else _load_initial_weights(model, config, init_state_dict)  # before writes
    previous = _previous_run(workdir, config, steps_per_epoch, data_seen)
    if previous is not None and previous[1] and not overwrite:
        print(f"{workdir} holds this run, finished at step {previous[0][-1]['step']}: nothing to do "
              "(--overwrite trains it again)", file=out)  # fmt: skip
        return previous[0]
    if previous is not None and not overwrite:
        history, _, diffs = previous
        # A run of these settings that logged no epoch and saved no model (stopped inside its first) has nothing
        # to lose: it is replaced below.
        if history != [] or diffs or (workdir / RUN_FILES[1]).exists():
            if history is None:
                which = "a torch run whose config.json or metrics.jsonl cannot be read"
            else:
                which = f"another torch run (settings: {', '.join(diffs)})" if diffs else "this run, unfinished,"
                which += f" with {len(history)} epochs logged"
            raise TrainError(
                f"{workdir} holds {which}, and this trainer does not resume; pass --overwrite to replace it, or give "
                "a new --workdir"
            )
    if previous is not None:  # never a mix of the old run's files and the new config
        for path in (workdir / name for name in RUN_FILES):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    config.save(workdir / "config.json")
    _write_json(workdir / "torch_options.json", {**dataclasses.asdict(options), "torch": torch.__version__})

    model = model.to(device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = torch.compile(model) if options.compile else model
    optimizer = make_optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    train_images = tdata.to_device(dataset.train_images, device)
    train_labels = torch.from_numpy(dataset.train_labels.astype("int64")).to(device)
    test_images = tdata.to_device(dataset.test_images, device)
    test_labels = torch.from_numpy(dataset.test_labels.astype("int64")).to(device)
    reporter = Reporter(workdir, progress=config.progress, stream=out, holdout=config.holdout)
    cuda_name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    device_name = run_device(device.type, cuda_name)  # each epoch's record names it: the results table
    reporter.print(
        f"torch {torch.__version__} on {device}: {config.arch}/{config.variant}, {n_train} train / "
        f"{len(test_images)} {'held-out' if config.holdout else 'test'} images, {steps_per_epoch} steps/epoch, "
        f"recipe {config.recipe}"
    )
    reporter.print("config: " + json.dumps(dataclasses.asdict(config), sort_keys=True))
    if config.init_weights:
        reporter.print(init_weights_line(config, kept))
    (workdir / "metrics.jsonl").write_text("")  # no resume: a new run starts a new metrics file
    history: list[dict[str, Any]] = []
    step = 0
    max_steps = config.max_steps if config.max_steps is not None else math.inf
    warm = False
    recorded_at = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            if step >= max_steps:
                break
            order = data_lib.train_batch_indices(config.seed, epoch, n_train, config.batch_size)
            n_steps = int(min(len(order), max_steps - step))
            order_dev = torch.from_numpy(order[:n_steps].astype("int64")).to(device)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            timed_steps = n_steps
            bar = reporter.epoch_bar(epoch + 1, config.epochs, steps_per_epoch, 0)
            t0 = time.perf_counter()
            for i in range(n_steps):
                lr = lr_at(config, steps_per_epoch, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order_dev[i]
                x = tdata.normalize(tdata.augment(train_images[idx], generator))
                if config.cutout:
                    x = tdata.cutout(x, generator, config.cutout)
                x = _prepare(x, options)
                y = train_labels[idx]
                with _autocast(options, device):
                    logits = forward(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.detach().double()
                correct += (logits.detach().argmax(dim=1) == y).sum()
                if not warm:  # keep warm-up (and compilation) out of the epoch time and img/s
                    _sync(device)
                    what = "warm-up and compilation" if options.compile else "warm-up"
                    reporter.print(f"first step ({what}) took {time.perf_counter() - t0:.1f}s")
                    warm, timed_steps = True, n_steps - 1
                    t0 = time.perf_counter()
                bar.update(1)
                if config.progress and (i % 20 == 0 or i == n_steps - 1):
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
            _sync(device)
            seconds = time.perf_counter() - t0
            bar.close()
            if not math.isfinite(float(loss_sum)):  # as the JAX trainer: stop, and keep the last good weights
                kept = f"model.safetensors holds epoch {epoch}'s weights" if history else "no weights were saved"
                raise TrainError(
                    f"loss is not finite (nan/inf) in epoch {epoch + 1} (steps {step - n_steps + 1}-{step}); "
                    f"stopping; {kept}"
                )
            finished = epoch + 1 == config.epochs and n_steps == steps_per_epoch  # the recipe's end: flip TTA too
            test = evaluate(forward, test_images, test_labels, config.batch_size, options, flip_tta=finished)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": lr_at(config, steps_per_epoch, step - 1),
                "train_loss": float(loss_sum) / n_steps,
                "train_acc": int(correct) / (n_steps * config.batch_size),
                "test_loss": test["loss"],
                "test_acc": test["accuracy"],
                "epoch_seconds": seconds,
                "images_per_second": timed_steps * config.batch_size / seconds if timed_steps else 0.0,
                "complete": n_steps == steps_per_epoch,
            }
            if finished:
                record.update(test_loss_flip=test["loss_flip"], test_acc_flip=test["accuracy_flip"])
            record["wall_seconds"] = time.perf_counter() - recorded_at  # as in the JAX trainer (flax_resnet/train.py)
            record["device"] = device_name
            recorded_at = time.perf_counter()
            metadata = weights_metadata(
                config.arch, config.variant, dataset.class_names, step, config.holdout, holdout_digest,
                {key: data_seen[key] for key in ("train_digest", "test_digest")},
            )
            save_state_dict(model, workdir / "model.safetensors", metadata)
            reporter.log_epoch(record, history, force_plot=finished)  # the plot at most every PLOT_SECONDS
            history.append(record)
        reporter.flush_plots()  # a run stopped by --max-steps: its last record is plotted too
        if history:
            reporter.print(format_final(history[-1], config.holdout))
    finally:
        reporter.close()
    return history


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
