"""The training command line shared by scripts/train.py (JAX) and scripts/train_torch.py (PyTorch reference).

One definition of the recipe flags keeps the two trainers comparable: same names, same validation, and every
default left to the recipe (`flax_resnet.config`) unless the flag is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_resnet.config import RECIPE_VALUES, RECIPES, SCHEDULES, Config
from flax_resnet.convert import StateDictError, WeightsFileError, load_weights_file, match_state_dict, non_finite
from flax_resnet.models import ARCHS, VARIANTS


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def batch_size(text: str) -> int:
    """argparse type: an integer >= 2 (train-mode BatchNorm needs two values per channel; on 32x32 inputs the
    imagenet and article variants end in 1x1 maps, so one image per batch would give one)."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (BatchNorm needs 2 images per batch), got {value}")
    return value


SEED_LIMIT = 2**32  # both frameworks take any seed below it (JAX fails from 2**63, torch from 2**64)


def seed(text: str) -> int:
    """argparse type: an integer in [0, 2**32)."""
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0 (nan rejected)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def finite_non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (an infinite weight decay is nan from the first step)."""
    value = non_negative_float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (a learning rate of 0 trains nothing for the whole run, without error)."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1) (label smoothing; momentum, which never decays from 1 on)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def path_arg(text: str) -> str:
    """argparse type: a path, not empty (an empty --init-weights would silently mean none, an empty --workdir
    the current folder)."""
    if not text.strip():
        got = f"only blanks {text!r}" if text else "an empty string"
        raise argparse.ArgumentTypeError(f"must name a path, got {got}")
    return text


def _default_workdir(args: argparse.Namespace) -> str:
    """runs/<trainer's prefix><arch>[_<variant>], the run folder when --workdir is not given: one per model,
    since a workdir holding another model's run is refused."""
    variant = args.variant or Config.variant
    name = f"{args.workdir_prefix}{args.arch or Config.arch}"
    return f"runs/{name}" + ("" if variant == Config.variant else f"_{variant}")


def module_names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated torch module or key names ('fc', 'fc,layer4.1'), none empty."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"wants comma-separated names such as fc or fc,layer4, got {text!r}")
    return names


def read_init_weights(config: Config, error: type[Exception]) -> dict[str, np.ndarray]:
    """`config.init_weights` read as a state dict, by both trainers before they load any data; a file that
    cannot be read raises `error` (the trainer's one-line error type)."""
    assert config.init_weights is not None
    try:
        state_dict = load_weights_file(config.init_weights)
    except WeightsFileError as e:
        raise error(f"--init-weights: {e}") from None
    # Training from them stops at the first step with "loss is not finite", which points at the recipe instead.
    problem = non_finite(state_dict)
    if problem:
        raise error(f"--init-weights: {config.init_weights}: {problem}")
    return state_dict


def match_init_weights(
    config: Config, expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any], error: type[Exception]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """`convert.match_state_dict` for the trainers: the entries a model with torch keys and shapes `expected`
    starts from, and the keys `--init-skip` leaves at the seeded init. A state dict that does not fit raises
    `error` in one bounded line, with the flags that fix the usual causes: another variant or depth (torchvision's
    7x7 stem into the default cifar variant), a head of another size."""
    try:
        return match_state_dict(expected, state_dict, skip=config.init_skip, what=f"{config.arch}/{config.variant}")
    except StateDictError as e:
        hint = _init_hint(config, e, expected, state_dict)
        raise error(f"--init-weights {config.init_weights}: {e.summary()}{hint}") from None


def _init_hint(
    config: Config, e: StateDictError, expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any]
) -> str:
    """The flags under which the state dict loads, where some do; a wrapper's prefix on every key is said by
    convert already (`e.hint`)."""
    if e.hint:
        return ""
    classes = expected["fc.weight"][0] if "fc.weight" in expected else 10
    fit = _flags_that_fit(config, state_dict, classes)
    if fit is None:
        return ""
    arch, variant, flags = fit
    head = f"--init-skip {','.join((*config.init_skip, 'fc'))}"
    if (arch, variant) == (config.arch, config.variant):
        return f"; {head} starts a head of another size from the seeded init"
    seeded = " (the head from the seeded init)" if head in flags else ""
    return f"; these weights are {arch}/{variant}'s: {flags}{seeded}"


def _flags_that_fit(config: Config, state_dict: Mapping[str, Any], num_classes: int) -> tuple[str, str, str] | None:
    """(arch, variant, its flags) of the first model that `state_dict` loads into, with `--init-skip ...,fc` where
    the head differs; None if none. Only the depth its `layerS.B` keys spell out is tried, each variant as an
    abstract model (shapes only, under 1.5 s each)."""
    from flax import nnx

    from flax_resnet.convert import torch_shapes
    from flax_resnet.models import create_model

    keys = [key.split(".") for key in state_dict if isinstance(key, str)]
    blocks = tuple(
        1 + max((int(k[1]) for k in keys if k[0] == f"layer{s}" and len(k) > 1 and k[1].isdigit()), default=-1)
        for s in range(1, 5)
    )
    kind = "bottleneck" if any(len(k) > 2 and k[2] == "conv3" for k in keys) else "basic"
    for arch in (a for a, spec in ARCHS.items() if spec == (kind, blocks)):
        for variant in VARIANTS:
            model = nnx.eval_shape(lambda arch=arch, variant=variant: create_model(arch, variant, num_classes))
            expected = torch_shapes(model)
            skips = [config.init_skip] + ([(*config.init_skip, "fc")] if "fc" not in config.init_skip else [])
            for skip in skips:
                try:
                    match_state_dict(expected, state_dict, skip=skip)
                except StateDictError:
                    continue
                flags = [f"--arch {arch}"] if arch != config.arch else []
                flags += [f"--variant {variant}"] if variant != config.variant else []
                flags += [f"--init-skip {','.join(skip)}"] if skip != config.init_skip else []
                return arch, variant, " ".join(flags)
    return None


def init_weights_line(config: Config, kept: list[str]) -> str:
    """What a trainer prints when it starts from `--init-weights`: the file and the keys left at the seeded init."""
    return f"weights from {config.init_weights}" + (f"; at the seeded init: {', '.join(kept)}" if kept else "")


def recipe_default(name: str) -> str:
    """Help text for a recipe-controlled default: 'default: X with --recipe default, Y with --recipe article'."""
    parts = [f"{RECIPE_VALUES[r].get(name, getattr(Config, name))} with --recipe {r}" for r in RECIPES]
    return "default: " + ", ".join(parts)


def add_training_flags(p: argparse.ArgumentParser, workdir_prefix: str, workdir_holds: str) -> None:
    """The flags both trainers share; each default is None so the recipe decides unless a flag is given. The
    trainer's default-workdir prefix (kept for `config_overrides`) and what its workdir holds go into
    --workdir's help."""
    p.set_defaults(workdir_prefix=workdir_prefix)
    p.add_argument("--arch", choices=tuple(ARCHS), help=f"network depth (default: {Config.arch})")
    p.add_argument("--variant", choices=VARIANTS, help=f"stem/shortcut/head variant (default: {Config.variant})")
    p.add_argument("--recipe", choices=RECIPES, default="default", help="hyperparameter recipe (default: default)")
    p.add_argument("--epochs", type=positive_int, help=recipe_default("epochs"))
    p.add_argument("--batch-size", type=batch_size, help="global batch size; " + recipe_default("batch_size"))
    p.add_argument("--lr", type=positive_float, help="peak learning rate; " + recipe_default("lr"))
    p.add_argument("--momentum", type=fraction, help=recipe_default("momentum"))
    p.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum; " + recipe_default("nesterov")
    )
    p.add_argument(
        "--weight-decay",
        type=finite_non_negative_float,
        help="added to the gradient, torch style; " + recipe_default("weight_decay"),
    )
    p.add_argument("--schedule", choices=SCHEDULES, help=recipe_default("schedule"))
    p.add_argument("--label-smoothing", type=fraction, help=recipe_default("label_smoothing"))
    p.add_argument(
        "--cutout",
        type=non_negative_int,
        help="erase a random square of this side (clipped at the border) from each training image, after "
        "crop and flip (DeVries & Taylor 2017); " + recipe_default("cutout"),
    )
    p.add_argument(
        "--data", type=path_arg,
        help="'tfds', an image-folder dir or .tar(.gz) (ROOT/{train,test}/CLASS/*.png|jpg..., 32x32 images, any "
             "number of classes), or cifar-10-python.tar.gz (default: tfds)",
    )
    p.add_argument(
        "--holdout",
        type=non_negative_int,
        help="hold out this many training images (stratified, one fixed split) and evaluate on them instead of "
        "the test set: for choosing a recipe without looking at the test set (default: 0, none)",
    )
    p.add_argument("--data-dir", type=path_arg, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets), or "
                   "the decoded-dataset cache dir for paths (default: ~/.cache/flax_resnet)")  # fmt: skip
    p.add_argument(
        "--workdir", type=path_arg,
        help=f"run directory: {workdir_holds} (default: runs/{workdir_prefix}<arch>, plus _<variant> for a "
        f"variant other than {Config.variant})",
    )
    p.add_argument(
        "--seed", type=seed, help=f"seed for init, batch order and augmentation (default: {Config.seed})"
    )
    p.add_argument(
        "--init-weights",
        type=path_arg,
        metavar="PATH",
        help="start from this torch state dict (.safetensors, .pt, .pth: torchvision's, torch_ref's, or an "
        "export of a JAX run) instead of the seeded init (train.py: a run that resumes takes its checkpoint)",
    )
    p.add_argument(
        "--init-skip",
        type=module_names,
        metavar="NAMES",
        help="comma-separated torch modules or keys of --init-weights to leave at the seeded init, e.g. fc for "
        "a head of another size (default: none; a name that matches nothing is an error)",
    )
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in total (smoke runs)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no tqdm progress bars")


def check_init_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error for --init-skip without --init-weights (it would skip nothing silently)."""
    if args.init_skip and not args.init_weights:
        parser.error("--init-skip applies to --init-weights only")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values that are Config fields (None = not given), for `make_config(args.recipe, **...)`, with
    the trainer's default workdir for the model when --workdir is not given."""
    fields = {f.name for f in dataclasses.fields(Config)} - {"recipe"}
    return {**{k: v for k, v in vars(args).items() if k in fields}, "workdir": args.workdir or _default_workdir(args)}
