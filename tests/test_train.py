"""The training loop in-process: evaluation counts every image once, workdir mismatch, non-finite loss."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TINY_TEST_PER_CLASS
from flax_resnet import data as data_lib
from flax_resnet.checkpoint import Checkpointer
from flax_resnet.config import make_config
from flax_resnet.distributed import make_mesh, put_replicated
from flax_resnet.models import predict
from flax_resnet.train import RunError, build_state, evaluate, make_eval_fn, merge_model, train


def _config(tiny_data: Path, tmp_path: Path, **kw):
    values = dict(
        arch="resnet18",
        variant="imagenet",
        batch_size=16,
        lr=0.05,
        epochs=2,
        progress=False,
        data=str(tiny_data),
        data_dir=str(tmp_path / "cache"),
        workdir=str(tmp_path / "run"),
    )
    values.update(kw)
    return make_config("default", **values)


def test_eval_counts_every_test_image_once(tiny_data: Path, tmp_path: Path) -> None:
    dataset = data_lib.load_dataset(tiny_data, tmp_path / "cache")
    n = len(dataset.test_labels)
    assert n == 3 * TINY_TEST_PER_CLASS and n % 16 != 0
    config = _config(tiny_data, tmp_path, num_classes=3)
    graphdef, state, _, _ = build_state(config)
    mesh = make_mesh()
    ev = evaluate(
        make_eval_fn(graphdef, jax.tree.structure(state)),
        put_replicated(state, mesh),
        put_replicated(dataset.test_images, mesh),
        put_replicated(dataset.test_labels, mesh),
        16,
        mesh,
        keep_logits=True,
    )
    # Hand count from per-image predictions of the same weights (no batching, no padding).
    logits = np.asarray(predict(merge_model(graphdef, state), data_lib.normalize(dataset.test_images), jit=False))
    correct = int(np.sum(np.argmax(logits, -1) == dataset.test_labels))
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - z[np.arange(n), dataset.test_labels]
    assert ev["count"] == n
    assert ev["accuracy"] == correct / n
    np.testing.assert_allclose(ev["loss"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["logits"], logits, rtol=1e-4, atol=1e-4)


def test_refuses_workdir_of_another_architecture(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    other = _config(tiny_data, tmp_path, arch="resnet34", variant="cifar")
    other.save(tmp_path / "run" / "config.json")
    with pytest.raises(RunError, match=r"arch 'resnet34' \(this run: 'resnet18'\).*refusing to resume"):
        train(_config(tiny_data, tmp_path))
    other = _config(tiny_data, tmp_path, num_classes=10, dtype="float32")
    other.save(tmp_path / "run" / "config.json")
    with pytest.raises(RunError, match=r"num_classes 10 \(this run: 3\)"):
        train(_config(tiny_data, tmp_path))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_data, tmp_path, max_steps=4, checkpoint_every=2)
    result = train(config)
    assert result["step"] == 4
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.all_steps() == [2, 4]

    # Hook: the resumed state gets one NaN weight, as after an overflow; the next loss is NaN.
    original = Checkpointer.restore_latest

    def poisoned(self, target, warn, **kw):
        state, meta = original(self, target, warn, **kw)
        params = jax.tree.map(lambda x: x, state.params)
        leaf = params["fc"]["kernel"]
        leaf[...] = leaf[...].at[0, 0].set(np.nan)
        return state.replace(params=params), meta

    monkeypatch.setattr(Checkpointer, "restore_latest", poisoned)
    with pytest.raises(RunError, match=r"not finite \(nan/inf\) at step 5 .*last good checkpoint: step 4"):
        train(_config(tiny_data, tmp_path, max_steps=8, checkpoint_every=2))
    monkeypatch.undo()
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [2, 4]
    _graphdef, state, _, _ = build_state(_config(tiny_data, tmp_path, num_classes=3))
    restored, _meta = Checkpointer(tmp_path / "run" / "checkpoints").restore(4, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= 4 for r in records)  # nothing was logged from the non-finite steps
