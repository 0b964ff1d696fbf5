"""Every training default in one place: the frozen run config and the two recipes.

`article` is the source tutorial's recipe; `default` is a short modern recipe for the cifar variant
(one-cycle, Nesterov, label smoothing, batch 512, bf16 on accelerators). Flags given on the command
line override the recipe; the effective config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEDULES = ("onecycle", "cosine", "piecewise")
RECIPES = ("default", "article")


# What a config saved before a field existed ran with, where that field's default has changed since:
# batch_norm was "autodiff" (the only implementation) until fused measured faster on a GPU (2026-11-28); every
# config saved since has the key (the default moved on to onepass on 2026-12-04).
LEGACY_DEFAULTS: dict[str, Any] = {"batch_norm": "autodiff"}


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration of one training run (saved as config.json in the workdir)."""

    arch: str = "resnet18"
    variant: str = "cifar"
    num_classes: int = 10
    recipe: str = "default"
    epochs: int = 40
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.15  # onecycle/cosine: share of steps spent warming up linearly from lr/25
    piecewise_boundaries: tuple[float, ...] = (150 / 270, 210 / 270)  # fractions of the run
    piecewise_factor: float = 0.1
    label_smoothing: float = 0.1
    cutout: int = 0  # side of the square erased from each training image after crop and flip; 0: none
    dtype: str = "auto"  # auto: bfloat16 on GPU/TPU, float32 on CPU
    conv_lowering: str = "auto"
    batch_norm: str = "onepass"  # how train-mode BatchNorm computes statistics and gradient (models.BATCH_NORMS)
    data: str = "tfds"
    data_dir: str | None = None
    holdout: int = 0  # training images held out to evaluate on instead of the test set (recipe selection)
    workdir: str = "runs/resnet18"
    seed: int = 0
    # A torch state dict (.safetensors/.pt/.pth: torchvision's, torch_ref's, a JAX run's export) that a fresh run
    # starts from instead of the seeded init (fine-tuning); a resumed run takes its checkpoint instead.
    init_weights: str | None = None
    init_skip: tuple[str, ...] = ()  # torch modules/keys of it left at the seeded init, e.g. ("fc",) for a new head
    max_steps: int | None = None
    checkpoint_every: int | None = None  # steps; None: at epoch ends (at most once per checkpoint_seconds)
    # Epoch-end checkpoints at most this often (wall seconds; 0: every epoch). A save costs ~1 s, most of a
    # 1.2 s GPU epoch of the article recipe; a crash loses at most this much more work. The last step, a
    # stop on a signal and --checkpoint-every are always saved.
    checkpoint_seconds: float = 30.0
    progress: bool = True

    def to_json(self) -> str:
        """The config as JSON (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Inverse of `to_json`; unknown keys are an error so stale workdirs are noticed."""
        raw: dict[str, Any] = json.loads(text)
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        raw = {**LEGACY_DEFAULTS, **raw}
        for key in ("piecewise_boundaries", "init_skip"):  # JSON lists, tuples in the frozen config
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    def save(self, path: str | Path) -> None:
        """Write config.json atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)


# Config fields that only say where things are, how often to report or save, or which implementation computes
# the same function: a run may resume with other values of them, and the results table does not group by them.
OPERATIONAL_KEYS = ("workdir", "data", "data_dir", "progress", "checkpoint_every", "checkpoint_seconds",
                    "conv_lowering", "batch_norm")
# The others: what a run learns, or how far it goes, depends on them.
SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in OPERATIONAL_KEYS)


# Recipe values; anything not named keeps the Config default above.
RECIPE_VALUES: dict[str, dict[str, Any]] = {
    # Short modern recipe: goal >= 95.3% final-epoch test accuracy for cifar ResNet-18 in <= 40 epochs.
    "default": dict(
        epochs=40,
        batch_size=512,
        lr=0.2,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="onecycle",
        label_smoothing=0.1,
        dtype="auto",
    ),
    # The source article: batch 128, SGD 0.1/0.9/5e-4, lr 0.1 for 150 epochs, 0.01 for 60, 0.001 for 60.
    "article": dict(
        epochs=270,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        schedule="piecewise",
        piecewise_boundaries=(150 / 270, 210 / 270),
        piecewise_factor=0.1,
        label_smoothing=0.0,
        dtype="float32",
    ),
}


def differences(saved: Config, config: Config, keys: Iterable[str] = SETTING_FIELDS) -> list[str]:
    """`key saved-value (this run: value)` for each of `keys` where a workdir's saved config and this run's
    differ: what both trainers name when they refuse a workdir that holds another run."""
    return [f"{k} {getattr(saved, k)!r} (this run: {getattr(config, k)!r})" for k in keys
            if getattr(saved, k) != getattr(config, k)]  # fmt: skip


def workdir_problem(workdir: str | Path) -> str | None:
    """Why `workdir` cannot hold a run, or None: checked by both trainers before they load any data."""
    if Path(workdir).exists() and not Path(workdir).is_dir():
        return f"--workdir {workdir} is a file, not a directory"
    return None


def data_problem(config: Config, image_shape: tuple[int, ...]) -> str | None:
    """What makes `config` unusable on images of `image_shape` (N, H, W, C), or None: checked by both trainers
    before they write anything."""
    if image_shape[0] == 0:
        return "the data has no training split (its folder holds test/ alone); scripts/evaluate.py scores a run on it"
    h, w = image_shape[1:3]
    if config.cutout > min(h, w):  # clipped at the border: from 2x the side on, every image is erased whole
        return f"--cutout {config.cutout} is larger than the {h}x{w} images: it would erase most or all of each one"
    return None


def make_config(recipe: str = "default", **overrides: Any) -> Config:
    """Recipe values, then explicit overrides (None means 'not given'), as one frozen Config."""
    if recipe not in RECIPE_VALUES:
        raise ValueError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    values = dict(RECIPE_VALUES[recipe], recipe=recipe)
    fields = {f.name for f in dataclasses.fields(Config)}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown config field {key!r}")
        if value is not None:
            values[key] = value
    return Config(**values)
