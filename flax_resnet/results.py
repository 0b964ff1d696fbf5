"""The results table: finished runs (workdirs of scripts/train.py or scripts/train_torch.py) grouped by setting.

Each row is one setting (framework and every config field that can change the result) over its seeds:
the *final-epoch* test accuracy (mean and sample std over seeds, never a best epoch), and the training time
per run (sum of the logged epoch times: evaluation, checkpoints and compilation excluded). Also the named
run plans that `scripts/reproduce.py run` executes, so every number in the README has a command behind it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flax_resnet.config import OPERATIONAL_KEYS, RECIPE_VALUES, Config, make_config

CPU_DATA = "../shared/data/cifar10-jpeg.tar.gz"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one workdir says about its run."""

    workdir: str
    framework: str  # "jax" or "torch"
    config: dict[str, Any]
    epochs_done: int
    final_test_acc: float | None  # None when the run stopped before its last epoch
    final_flip_acc: float | None  # the same with flip TTA; None also for runs made before it was measured
    train_seconds: float
    # Each stretch of epochs on one device, in order (None: records from before 2026-12-06 name none).
    devices: tuple[str | None, ...] = ()


def summarize_run(workdir: str | Path) -> RunSummary:
    """Read config.json and metrics.jsonl of one run; raise ValueError naming the file if either is unusable.

    A run without metrics.jsonl, or without a line in it, stopped before its first epoch: unfinished, as is a
    run whose last epoch is not its config's last. A torn last line (a run killed while writing it) is left
    out, as the trainers read it; any other line that is not an epoch record, or epochs out of order, make the
    files unusable: the last line would not be the final epoch.
    """
    workdir = Path(workdir)
    try:
        saved = json.loads((workdir / "config.json").read_text())
        if not isinstance(saved, dict):
            raise TypeError(f"config.json holds a {type(saved).__name__}, not a run config")
        # Fields added to Config after a run was made take what that run used: their default then.
        config = json.loads(Config.from_json(json.dumps(saved)).to_json())  # as saved: tuples are lists
        _check_config(config)
        records = _read_records(workdir / "metrics.jsonl", config["epochs"])
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{workdir}: unusable run files ({e})") from e
    complete = [r for r in records if r.get("complete", True)]
    done = complete[-1]["epoch"] if complete else 0
    finished = done == config["epochs"]
    return RunSummary(
        workdir=str(workdir),
        framework="torch" if (workdir / "torch_options.json").exists() else "jax",
        config=config,
        epochs_done=done,
        final_test_acc=complete[-1]["test_acc"] if finished else None,
        final_flip_acc=complete[-1].get("test_acc_flip") if finished else None,
        train_seconds=sum(r["epoch_seconds"] for r in records),
        devices=_stretches(r.get("device") for r in records),
    )


# The config fields the table reads, and the type each must have (bool is no int here).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "arch": str, "variant": str, "recipe": str, "dtype": str, "epochs": int, "batch_size": int, "seed": int,
    "lr": (int, float), "num_classes": int, "holdout": int,
}  # fmt: skip
_KIND_NAMES = {str: "a string", int: "an integer", (int, float): "a number"}


def _check_config(config: dict[str, Any]) -> None:
    """TypeError/ValueError naming the first field of a saved config the table cannot use."""
    for key, kind in _FIELD_TYPES.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"config.json's {key} is {value!r}, not {_KIND_NAMES[kind]}")
    if config["recipe"] not in RECIPE_VALUES:
        raise ValueError(f"config.json's recipe {config['recipe']!r} is none of {', '.join(RECIPE_VALUES)}")
    if config["epochs"] < 1:
        raise ValueError(f"config.json's epochs is {config['epochs']}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_records(path: Path, epochs: int) -> list[dict[str, Any]]:
    """The epoch records of a metrics.jsonl ([] when there is none), checked to be one run's epochs in order."""
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # torn by a kill mid-write; the trainers drop it too
                break
            raise ValueError(f"metrics.jsonl line {number} is not JSON") from None
        if not (
            isinstance(record, dict)
            and all(_is_number(record.get(k)) for k in ("epoch", "epoch_seconds", "test_acc"))
            and isinstance(record["epoch"], int)
        ):
            raise TypeError(f"metrics.jsonl line {number} is not an epoch record (epoch, epoch_seconds, test_acc)")
        if not isinstance(record.get("device", ""), str):
            raise TypeError(f"metrics.jsonl line {number}'s device is {record['device']!r}, not a string")
        previous = records[-1]["epoch"] if records else 0
        if not previous < record["epoch"] <= epochs:
            raise ValueError(f"metrics.jsonl line {number} is epoch {record['epoch']} after epoch {previous} of a "
                             f"{epochs}-epoch run: not one run's epochs in order")  # fmt: skip
        records.append(record)
    return records


SETTING_KEYS = ("arch", "variant", "recipe", "epochs", "batch_size", "lr", "dtype")
# Config fields the runs of one setting may differ in: the seed, and the operational ones (data is its own column).
NOT_SETTING_KEYS = ("seed", *OPERATIONAL_KEYS)


def _other_settings(config: dict[str, Any]) -> str:
    """The fields outside the table's columns whose values differ from the run's recipe, as 'name=value'."""
    recipe = dataclasses.asdict(make_config(config["recipe"]))
    shown = {*SETTING_KEYS, *NOT_SETTING_KEYS, "holdout"}  # holdout: in the data column
    diffs = []
    for key, value in sorted(config.items()):
        if key in shown or key not in recipe:
            continue
        expected = recipe[key]
        if isinstance(expected, tuple):
            expected = list(expected)
        if value != expected:
            if key == "init_weights":
                value = _weights_name(value)
            elif key == "init_skip":
                value = ",".join(value)
            diffs.append(f"{key}={value}")
    return " ".join(diffs) or "-"


def _weights_name(path: str) -> str:
    """An --init-weights file as the table shows and groups it: the file, not where it was on one machine."""
    return Path(path).name


def _data_name(config: dict[str, Any]) -> str:
    name = Path(config["data"]).name
    holdout = config.get("holdout", 0)
    return f"{name}, evaluated on {holdout} held-out train images" if holdout else name


def group_runs(runs: Iterable[RunSummary]) -> list[tuple[dict[str, Any], list[RunSummary]]]:
    """Runs grouped by framework and every setting that can change the result (all but NOT_SETTING_KEYS); the data
    and the initial weights by file name, as the table shows them: one file copied to each machine is one setting."""
    groups: dict[tuple, tuple[dict[str, Any], list[RunSummary]]] = {}
    for run in runs:
        setting = {"framework": run.framework, **{k: run.config[k] for k in SETTING_KEYS}}
        setting["other"] = _other_settings(run.config)
        setting["data"] = _data_name(run.config)
        rest = {k: v for k, v in run.config.items() if k not in {*SETTING_KEYS, *NOT_SETTING_KEYS}}
        if rest.get("init_weights"):
            rest["init_weights"] = _weights_name(rest["init_weights"])
        key = json.dumps([setting, rest], sort_keys=True)
        groups.setdefault(key, (setting, []))[1].append(run)
    return list(groups.values())


class RepeatedSeedError(ValueError):
    """Two runs of one setting share a seed (`results_table`); str(e) names them, in one line."""


def _repeated_seeds(group: Sequence[RunSummary]) -> str:
    """'seed S is in A and B' for the first seed that several runs of one setting share, else ''."""
    by_seed: dict[Any, list[str]] = {}
    for run in group:
        by_seed.setdefault(run.config["seed"], []).append(run.workdir)
    for seed, workdirs in by_seed.items():
        if len(workdirs) > 1:
            return f"seed {seed} is in {' and '.join(workdirs)}, runs of the same setting"
    return ""


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _stretches(values: Iterable[Any]) -> tuple[Any, ...]:
    """`values` with each run of equal neighbours once: A, A, B, A -> A, B, A."""
    return tuple(value for value, _ in itertools.groupby(values))


def _devices(group: Sequence[RunSummary], label: str | None) -> str:
    """Each run's devices in order ("A then B" for a run resumed elsewhere), the distinct ones of a setting
    joined; `label` names the epochs whose records name no device (runs from before 2026-12-06)."""
    named = [" then ".join(_stretches(d or label or "not recorded" for d in run.devices or (None,))) for run in group]
    return ", ".join(dict.fromkeys(named))


def results_table(runs: Sequence[RunSummary], device: str | None = None) -> str:
    """Markdown table of the grouped runs; accuracies in percent, time per run in minutes (of the finished runs).

    "other" lists the settings that differ from the run's recipe; a run evaluated on held-out training
    images (`--holdout`) says so in the data column, and its accuracy is that of those images, not the test set.
    "with flip TTA" is the final evaluation's flip test-time-augmented accuracy, for settings whose runs all have it.
    "device" is what each run's metrics.jsonl records; `device` labels the runs made before they recorded one.
    Two runs of one setting with the same seed (a copied or re-run workdir) are a RepeatedSeedError naming them.
    """
    head = (
        "| framework | arch | variant | recipe | epochs | batch | lr | dtype | other | seeds | final-epoch acc % "
        "| with flip TTA % | train min/run | device | data |\n" + "|---" * 15 + "|\n"
    )
    rows = []
    for setting, group in group_runs(runs):
        repeated = _repeated_seeds(group)
        if repeated:  # a copied or re-run workdir is not another replicate: mean ± std would count it as one
            raise RepeatedSeedError(
                f"{repeated}: one run per seed and setting, or the mean and std count a seed twice (runs that "
                "differ only in how they compute, e.g. --conv-lowering, go into separate tables)"
            )
        finished = [r for r in group if r.final_test_acc is not None]
        acc = _mean_std([100 * r.final_test_acc for r in finished]) if finished else "did not finish"
        if len(finished) < len(group):
            acc += f" ({len(group) - len(finished)} of {len(group)} unfinished)"
        flips = [100 * r.final_flip_acc for r in finished if r.final_flip_acc is not None]
        flip = _mean_std(flips) if flips and len(flips) == len(finished) else "not measured"
        seeds = ",".join(str(r.config["seed"]) for r in group)
        minutes = statistics.mean(r.train_seconds for r in finished or group) / 60  # a stopped run: less
        s = setting
        rows.append(
            f"| {s['framework']} | {s['arch']} | {s['variant']} | {s['recipe']} | {s['epochs']} | {s['batch_size']} "
            f"| {s['lr']:g} | {s['dtype']} | {s['other']} | {seeds} | {acc} | {flip} | {minutes:.2f} "
            f"| {_devices(group, device)} | {s['data']} |"
        )
    return head + "\n".join(rows) + "\n"


# Named plans for `scripts/reproduce.py run`: (workdir name, script, arguments). `{data}` is the data path.
_R18_IMAGENET = ["--arch", "resnet18", "--variant", "imagenet", "--data", "{data}", "--no-progress"]
PLANS: dict[str, list[tuple[str, str, list[str]]]] = {
    # Issue "train": 2 epochs, batch 128, imagenet stem, on the 2-core CPU, JAX and the torch reference.
    "cpu-realdata": [
        ("jax_r18_imagenet_e2", "train.py", [*_R18_IMAGENET, "--epochs", "2", "--batch-size", "128"]),
        ("torch_r18_imagenet_e2", "train_torch.py", [*_R18_IMAGENET, "--epochs", "2", "--batch-size", "128",
                                                     "--device", "cpu"]),
    ],
    # Issue "results": the most epochs each framework fits in <= 20 minutes of training on the CPU that runs
    # the plan. Its --epochs come from short runs of the two trainers on that machine first (SIZED_PLANS):
    # the CPUs this project has met train an epoch in 50-160 s (JAX) and 66-260 s (torch), so no fixed count
    # fits them all. (The 2026-11-28 runs used fixed counts, JAX 7 and torch 5, sized by hand for that EPYC.)
    "cpu-budget": [
        ("jax_r18_imagenet_budget20", "train.py", [*_R18_IMAGENET, "--batch-size", "128"]),
        ("torch_r18_imagenet_budget20", "train_torch.py", [*_R18_IMAGENET, "--batch-size", "128", "--device", "cpu"]),
    ],
    # On a GPU: default recipe x 3 seeds in each framework (issue: JAX vs torch within 0.3 points), the article
    # recipe and variant.
    "gpu": [
        *[
            (f"jax_default_r18_s{s}", "train.py", ["--arch", "resnet18", "--data", "{data}", "--no-progress",
                                                   "--seed", str(s)])
            for s in range(3)
        ],
        *[
            (f"torch_default_r18_s{s}", "train_torch.py", ["--arch", "resnet18", "--data", "{data}", "--no-progress",
                                                            "--amp", "--channels-last", "--seed", str(s)])
            for s in range(3)
        ],
        ("jax_article_r18_s0", "train.py", ["--arch", "resnet18", "--variant", "article", "--recipe", "article",
                                            "--data", "{data}", "--no-progress"]),
    ],
}


# Plans sized on the machine that runs them: plan -> calibration steps. `scripts/reproduce.py run` first runs
# each command of the plan for that many steps (`calibration_commands`), reads the trainer's own img/s
# (`calibrated_rate`), and passes each framework the `--epochs` that `budget_epochs` gives. The trainers
# themselves, not scripts/benchmark.py: on 2026-12-04 (EPYC) the torch trainer's epochs ran at 490-570 img/s
# minutes after the benchmark's torch step had measured 658-697 (its windows): the 14 epochs planned from the
# benchmark were on course for ~23 minutes of training, and that run was stopped.
SIZED_PLANS: dict[str, int] = {"cpu-budget": 60}
CIFAR10_TRAIN_IMAGES = 50_000
# The share of a budget left unplanned, for drift: on 2026-12-04 the torch trainer's epochs ran 6-30% above its
# 60-step calibration, and JAX's epochs spread 759-896 img/s within one run.
BUDGET_MARGIN = 0.15


def _framework(script: str) -> str:
    return "torch" if script == "train_torch.py" else "jax"


def plan_commands(
    plan: str, root: str | Path, data: str, extra: Sequence[str] = (), epochs: Mapping[str, int] | None = None
) -> list[list[str]]:
    """The argument vectors (script path first) of a named plan, each with its own --workdir under root.

    `epochs` (framework -> count) adds `--epochs` to each command: how a sized plan gets its calibrated counts.
    """
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; valid choices: {', '.join(PLANS)}")
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    commands = []
    for name, script, args in PLANS[plan]:
        sized = ["--epochs", str(epochs[_framework(script)])] if epochs is not None else []
        commands.append([str(scripts / script), *[a.format(data=data) for a in args], *sized,
                         "--workdir", str(Path(root) / name), *extra])
    return commands


def calibration_commands(plan: str, root: str | Path, data: str, extra: Sequence[str] = ()) -> list[list[str]]:
    """A sized plan's commands cut to its calibration steps (one short epoch each), with workdirs under root."""
    steps = ["--epochs", "1", "--max-steps", str(SIZED_PLANS[plan])]
    return plan_commands(plan, root, data, extra=[*steps, *extra])


def plan_frameworks(plan: str) -> set[str]:
    """The frameworks ("jax", "torch") a plan trains."""
    return {_framework(script) for _, script, _ in PLANS[plan]}


def plan_batch_size(plan: str) -> int:
    """The --batch-size every command of a sized plan passes (ValueError if they differ or one has none)."""
    sizes = {args[args.index("--batch-size") + 1] if "--batch-size" in args else None for _, _, args in PLANS[plan]}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"plan {plan!r} has no single --batch-size")
    return int(sizes.pop())


def calibrated_rate(workdir: str | Path) -> tuple[str, float, int]:
    """(framework, timed img/s, batch size) of a calibration run: its last metrics line, first step excluded."""
    run = summarize_run(workdir)
    lines = [line for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rate = json.loads(lines[-1]).get("images_per_second", 0.0) if lines else 0.0
    if not rate > 0:
        raise ValueError(f"{workdir}: the calibration run timed no steps")
    return run.framework, float(rate), int(run.config["batch_size"])


def recorded_train_images(workdir: str | Path) -> int | None:
    """The training-set size a JAX run's latest checkpoint records (None: no checkpoint, or one from before
    2026-12-04): what an epoch of that run's data is, e.g. for a calibration on a subset of CIFAR-10."""
    from flax_resnet.checkpoint import Checkpointer

    ckpt = Checkpointer(Path(workdir) / "checkpoints", read_only=True)
    try:
        step = ckpt.latest_step()
        return None if step is None else ckpt.read_meta(step).get("train_images")
    finally:
        ckpt.close()


@dataclasses.dataclass(frozen=True)
class EpochBudget:
    """How many epochs of one framework's training fit a time budget, and the measurement that says so."""

    framework: str
    images_per_second: float  # the trainer's own rate in its calibration run
    epoch_seconds: float  # a whole epoch's batches at that rate
    epochs: int


def budget_epochs(
    rates: Mapping[str, float], batch_size: int, budget_seconds: float, margin: float = BUDGET_MARGIN,
    train_images: int = CIFAR10_TRAIN_IMAGES,
) -> dict[str, EpochBudget]:
    """Per framework (name -> img/s), the most epochs whose steps fit budget * (1 - margin).

    An epoch is every full batch of the training set (the trainers drop the last partial one); the margin is
    left for the machine's drift. Raises ValueError when not even one epoch fits.
    """
    budgets = {}
    for framework, rate in rates.items():
        epoch_seconds = (train_images // batch_size) * batch_size / rate
        epochs = int(budget_seconds * (1 - margin) // epoch_seconds)
        if epochs < 1:
            raise ValueError(f"one {framework} epoch takes ~{epoch_seconds:.0f} s at {rate:.0f} img/s, more than "
                             f"{budget_seconds * (1 - margin):.0f} s (budget less margin)")
        budgets[framework] = EpochBudget(framework, rate, epoch_seconds, epochs)
    return budgets
