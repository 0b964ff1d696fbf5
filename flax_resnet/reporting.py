"""What a run shows and writes: tqdm bars, one console line per epoch, metrics.jsonl, TensorBoard, PNG plots.

Everything here is host-side and called at most a few times per epoch; the training step never waits on it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from flax_resnet.data import printable

METRIC_KEYS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "images_per_second",
)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | Path, max_step: int, finished: bool = False) -> list[dict[str, Any]]:
    """Keep only complete-epoch records up to `max_step` (what a resumed run has not redone); return them.

    `finished`: the checkpoint at `max_step` ends the run, so a partial-epoch record there (a run stopped by
    --max-steps) is final and kept; otherwise the resumed run rewrites it when its epoch completes."""
    path = Path(path)
    kept = [
        r
        for r in read_metrics(path)
        if r.get("step", 0) <= max_step and (r.get("complete", True) or (finished and r.get("step") == max_step))
    ]
    if path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    return kept


class _NoBar:
    """Stand-in for a tqdm bar when progress display is off."""

    def __init__(self, initial: int = 0):
        self.n = initial

    def update(self, n: int = 1) -> None:
        """Count progress without showing it."""
        self.n += n

    def set_postfix(self, **kwargs: Any) -> None:
        """Ignore live metrics."""

    def close(self) -> None:
        """Nothing to close."""


# The plots are redrawn at most this often (and when asked, e.g. after a run's last epoch): a redraw costs
# 0.3-0.7 s, half of a GPU epoch of the article recipe (results/gpu_2026-11-28_session2/README.md).
PLOT_SECONDS = 30.0


class Reporter:
    """Console, metrics.jsonl, TensorBoard and plots of one run's workdir (outputs only on process 0)."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        progress: bool = True,
        write: bool = True,
        stream: TextIO | None = None,
        holdout: int = 0,
    ):
        self.workdir = Path(workdir)
        self.evaluated = "holdout" if holdout else "test"  # the split of the test_* numbers (--holdout N)
        self._plotted_at = time.time()
        self._pending: Callable[[], None] | None = None  # the redraw the last record is waiting for
        self.progress = progress
        self.write = write
        self.stream = stream if stream is not None else sys.stdout
        self.metrics_path = self.workdir / "metrics.jsonl"
        self._tb = None
        if write:  # fail at start, not after the first epoch's work (seen on a machine without tensorboardX)
            import tensorboardX  # noqa: F401

    def print(self, text: str) -> None:
        """One console line (process 0 only)."""
        if self.write:
            print(text, file=self.stream, flush=True)

    def epoch_bar(self, epoch: int, epochs: int, steps: int, initial: int) -> Any:
        """A tqdm bar over one epoch's steps (starting at `initial` when resuming mid-epoch), or a no-op."""
        if not (self.progress and self.write):
            return _NoBar(initial)
        from tqdm import tqdm

        return tqdm(
            total=steps, initial=initial, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True
        )

    def log_epoch(
        self,
        record: dict[str, Any],
        history: list[dict[str, Any]],
        force_plot: bool = False,
        also_plot: Callable[[], None] | None = None,
    ) -> None:
        """Append `record` to metrics.jsonl (fsynced) and TensorBoard, print the summary line; redraw curves.png
        (and call `also_plot`, the caller's own figure of this epoch) if `force_plot` or PLOT_SECONDS have
        passed since the last redraw, else keep that redraw for `flush_plots`."""
        if not self.write:
            return
        missing = [k for k in METRIC_KEYS if k not in record]
        if missing:
            raise ValueError(f"metrics record lacks {missing}")
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._tensorboard(record)
        records = [*history, record]

        def redraw() -> None:
            plot_curves(records, self.workdir / "curves.png", self.evaluated)
            if also_plot is not None:
                also_plot()

        self._pending = redraw
        if force_plot or time.time() - self._plotted_at >= PLOT_SECONDS:
            self.flush_plots()
        self.print(format_epoch(record, self.evaluated))

    def flush_plots(self) -> None:
        """Make the last logged record's redraw if it is still pending."""
        if self._pending is None:
            return
        self._pending()
        self._pending, self._plotted_at = None, time.time()

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "images_per_second",
                    "test_loss_flip", "test_acc_flip"):  # fmt: skip
            if key in record:  # the flip-TTA keys: only at the end of a run
                self._tb.add_scalar(key, record[key], record["step"])
        self._tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_epoch(r: dict[str, Any], evaluated: str = "test") -> str:
    """The one-line epoch summary printed to the console; `evaluated` names the split of the test_* numbers."""
    part = "" if r.get("complete", True) else " (partial)"
    return (
        f"epoch {r['epoch']}{part} step {r['step']} lr {r['lr']:.4g} | "
        f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}% | "
        f"{evaluated} loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}% | "
        + (f"flip TTA acc {100 * r['test_acc_flip']:.2f}% | " if "test_acc_flip" in r else "")
        + f"{r['epoch_seconds']:.1f}s "
        # 0: every step of the epoch was a run's first (compile, warm-up), which neither trainer times
        + (f"{r['images_per_second']:.0f} img/s" if r["images_per_second"] > 0
           else "img/s not measured (first step only)")
    )


def format_final(record: dict[str, Any], holdout: int = 0) -> str:
    """The run's last line, the same from both trainers: its final epoch's accuracy (never a best epoch), or that
    of the partial epoch where --max-steps stopped it."""
    split = f"holdout ({holdout} training images)" if holdout else "test"
    flip = f"; with flip TTA {100 * record['test_acc_flip']:.2f}%" if "test_acc_flip" in record else ""
    which = "final epoch, not best-of" if record.get("complete", True) else "after a partial epoch, at --max-steps"
    return f"final: step {record['step']}, {split} accuracy {100 * record['test_acc']:.2f}% ({which}){flip}"


def _quiet_missing_glyphs(plot: Callable[..., None]) -> Callable[..., None]:
    """`plot` without matplotlib's two-line warning per character its font lacks (e.g. a CJK class name, which
    the figure shows as boxes): printed at each redraw, it buried the trainer's epoch lines."""

    @functools.wraps(plot)
    def quiet(*args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
            plot(*args, **kwargs)

    return quiet


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@_quiet_missing_glyphs
def plot_curves(records: Sequence[dict[str, Any]], path: str | Path, evaluated: str = "test") -> None:
    """Loss and accuracy per epoch, train and test (`evaluated` names that split in the legend), side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style, label in (("train", "-o", "train"), ("test", "-s", evaluated)):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], style, label=label, markersize=3)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in records], style, label=label, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


@_quiet_missing_glyphs
def plot_predictions(
    images: np.ndarray, labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], path: str | Path
) -> None:
    """A grid of uint8 NHWC images titled 'pred (true)': green when right, red when wrong."""
    plt = _pyplot()
    n = len(images)
    cols = min(8, n)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i])
        right = int(preds[i]) == int(labels[i])
        ax.set_title(
            f"{printable(class_names[int(preds[i])])}\n({printable(class_names[int(labels[i])])})",
            fontsize=7,
            color="green" if right else "red",
        )
    fig.suptitle("predicted (true)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


@_quiet_missing_glyphs
def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    k = len(class_names)
    class_names = [printable(name) for name in class_names]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    top = matrix.max() if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(matrix[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if top and matrix[i, j] > top / 2 else "black",
            )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: str | Path) -> None:
    """Write a figure atomically (a reader never sees a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    except BaseException:  # e.g. `path` is a directory: leave no temp file behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
