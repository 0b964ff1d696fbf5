"""Checkpointer: round trip (a whole TrainState too), last-2 retention, half-written and corrupt steps, disk
full while saving, a sound checkpoint of another layout (refused, never quarantined), damaged metadata."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from flax_resnet.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    find_checkpoint,
    tree_digest,
)


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(64, 33)).astype(np.float32)), "b": jnp.arange(7.0) + seed},
        "step": jnp.asarray(seed, jnp.int32),
    }


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _leaves(tree: dict) -> list:
    import jax

    return jax.tree.leaves(tree)


def _largest_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_round_trip_keeps_last_two_and_ignores_half_written(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ck")
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"epoch": 0, "note": "x"})
    assert ckpt.all_steps() == [2, 3]
    # A directory left by a run killed mid-save is never a checkpoint.
    (tmp_path / "ck" / "4.orbax-checkpoint-tmp-1234").mkdir()
    assert ckpt.latest_step() == 3
    restored, meta = ckpt.restore(3, _state(0))
    assert _equal(restored, _state(3))
    assert meta["step"] == 3 and meta["note"] == "x" and meta["digest"] == tree_digest(_state(3))
    ckpt.close()
    assert find_checkpoint(tmp_path / "ck") == (tmp_path / "ck", None)
    assert find_checkpoint(tmp_path / "ck" / "3") == (tmp_path / "ck", 3)


def test_a_train_state_comes_back_whole(tmp_path: Path) -> None:
    """A trainer's TrainState (article variant, so SGD with momentum) with a moved momentum buffer and moved
    BatchNorm statistics comes back bitwise into a fresh state, every leaf: a save that dropped or zeroed the
    optimizer state or the statistics was caught only by the slow kill-and-resume test."""
    import jax

    from flax_resnet.config import make_config
    from flax_resnet.train import TrainState, build_state

    config = make_config("article", arch="resnet18", variant="article", dtype="float32")
    _, fresh, tx, _ = build_state(config)
    rng = np.random.default_rng(0)

    def noise(tree):
        return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(a.dtype)), tree)

    opt_state = fresh.opt_state
    for _ in range(2):
        _, opt_state = tx.update(noise(fresh.params), opt_state, fresh.params)
    stats = jax.tree.map(lambda a, b: a + jnp.abs(b), fresh.batch_stats, noise(fresh.batch_stats))
    state = TrainState(jnp.asarray(2, jnp.int32), noise(fresh.params), stats, opt_state)
    for part in ("params", "batch_stats", "opt_state", "step"):  # else the check below could not fail
        assert not _equal(getattr(state, part), getattr(fresh, part)), part

    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, state, {"epoch": 0})
    restored, meta = ckpt.restore_latest(build_state(config)[1], warn=pytest.fail)
    ckpt.close()
    assert meta["step"] == 2 and type(restored) is TrainState
    for part in ("params", "batch_stats", "opt_state", "step"):
        assert jax.tree.structure(getattr(restored, part)) == jax.tree.structure(getattr(state, part)), part
        assert _equal(getattr(restored, part), getattr(state, part)), part


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path: Path, damage: str) -> None:
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(3, _state(3), {})  # consecutive steps: the skipped one is the step right after the restored one
    ckpt.save(4, _state(4), {})
    victim = _largest_file(ckpt.step_dir(4))
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:
        victim.write_bytes(data[:16] + bytes(255 - b for b in data[16:]))
    with pytest.raises(CheckpointError, match=r"ck/4: unreadable checkpoint \(array params\.w: "):  # the largest
        ckpt.restore(4, _state(0))
    warnings: list[str] = []
    restored, meta = ckpt.restore_latest(_state(0), warnings.append, quarantine=tmp_path / "bad")
    assert meta["step"] == 3 and _equal(restored, _state(3))
    assert len(warnings) == 1 and "ck/4" in warnings[0] and "falling back to step 3" in warnings[0]
    assert "TensorStore details" not in warnings[0]  # tensorstore's repr of a bound method: noise, left out
    # The damaged step was moved aside, so a resumed run can write step 4 again.
    assert ckpt.all_steps() == [3] and len(list((tmp_path / "bad").iterdir())) == 1
    ckpt.save(4, _state(5), {})
    assert _equal(ckpt.restore(4, _state(0))[0], _state(5))


def test_an_array_that_reads_but_changed_is_named(tmp_path: Path) -> None:
    # Arrays that decode but are not what was saved (here a step's state replaced by one whose `params.b`
    # alone differs): the digest catches it, and the per-array digests name the array.
    saved = _state(4)
    changed = {**saved, "params": {**saved["params"], "b": saved["params"]["b"] + 1}}
    ckpt, other = Checkpointer(tmp_path / "ck"), Checkpointer(tmp_path / "other")
    ckpt.save(4, saved, {})
    other.save(4, changed, {})
    shutil.rmtree(ckpt.step_dir(4) / "state")
    shutil.copytree(other.step_dir(4) / "state", ckpt.step_dir(4) / "state")
    assert _equal(other.restore(4, _state(0))[0], changed)
    with pytest.raises(CheckpointError, match=r"ck/4: checkpoint is corrupt in params\.b \(digest [0-9a-f]{8} != "):
        ckpt.restore(4, _state(0))


def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(1, _state(1), {})
    shutil.rmtree(ckpt.step_dir(1) / "state")
    (ckpt.step_dir(1) / "state").mkdir()
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*ck.*ck/1"):
        ckpt.restore_latest(_state(0), lambda line: None)


def test_reading_a_directory_without_a_readable_step_is_one_quiet_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # What `scripts/evaluate.py DIR` and `export.py DIR` met: a step directory holding junk. orbax logged
    # "Metadata file does not exist" on every listing, and the error told a reader to resume.
    (tmp_path / "ck" / "5").mkdir(parents=True)
    (tmp_path / "ck" / "5" / "state").write_text("junk")
    capfd.readouterr()
    caplog.set_level(logging.INFO)
    reader = Checkpointer(tmp_path / "ck", read_only=True)
    warnings: list[str] = []
    with pytest.raises(CheckpointError) as excinfo:
        reader.restore_latest(_state(0), warnings.append)
    message = str(excinfo.value)
    assert message.startswith(f"no readable checkpoint in {tmp_path / 'ck'} (newest error: {tmp_path / 'ck' / '5'}: ")
    assert "resumes" not in message and "moved" not in message and warnings == []
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with pytest.raises(CheckpointError, match=r"nothing was moved or deleted: .* the same command resumes"):
        Checkpointer(tmp_path / "ck").restore_latest(_state(0), warnings.append)  # a training run's resume


def test_nothing_is_moved_when_no_step_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every step failing may be the machine's fault (device out of memory, an unreadable disk), not the files':
    # the checkpoints must stay where they are, so that the same command resumes once the cause is gone.
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, _state(2), {})
    ckpt.save(4, _state(4), {})

    def failing(self, step, target):
        raise CheckpointError(f"{self.step_dir(step)}: unreadable checkpoint (RESOURCE_EXHAUSTED: out of memory)")

    monkeypatch.setattr(Checkpointer, "restore", failing)
    warnings: list[str] = []
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .*newest error: .*ck/4: .*nothing was moved"):
        ckpt.restore_latest(_state(0), warnings.append, quarantine=tmp_path / "bad")
    assert len(warnings) == 1 and "ck/2" in warnings[0]  # the newest one's is in the error, not said twice
    assert ckpt.all_steps() == [2, 4] and not (tmp_path / "bad").exists()
    monkeypatch.undo()
    restored, meta = ckpt.restore_latest(_state(0), warnings.append, quarantine=tmp_path / "bad")
    assert meta["step"] == 4 and _equal(restored, _state(4))


def test_disk_full_mid_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, _state(2), {})

    async def full_disk(self, x, directory):  # write part of the file, then the disk is full
        (directory / "metadata").write_text('{"partial": ')
        os.write(2, b"Traceback: a writer's noise\n")  # as orbax's and tensorstore's writers print on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
    with pytest.raises(CheckpointError) as info:
        ckpt.save(4, _state(4), {})
    message = str(info.value)
    assert "\n" not in message
    assert "a writer's noise" not in capfd.readouterr().err  # the one-line error is all the user sees
    assert "step 4" in message and "disk full" in message and "previous checkpoint (step 2) is intact" in message
    monkeypatch.undo()
    assert ckpt.all_steps() == [2]
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name != "2"]  # no partial directory left behind
    assert _equal(Checkpointer(tmp_path / "ck").restore_latest(_state(0), print)[0], _state(2))


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        find_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        find_checkpoint(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a run directory"):
        find_checkpoint(tmp_path / "file")


def test_another_layout_is_refused_and_nothing_is_moved(tmp_path: Path) -> None:
    # As after resuming with --momentum 0: the target lacks the momentum buffers the checkpoint holds.
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, _state(2), {})
    ckpt.save(4, _state(4), {})
    fewer = {"params": {"w": _state(0)["params"]["w"]}, "step": _state(0)["step"]}
    warnings: list[str] = []
    with pytest.raises(CheckpointMismatchError, match=r"ck/4: holds a state of another layout \(3 arrays\).*\(2;"):
        ckpt.restore_latest(fewer, warnings.append, quarantine=tmp_path / "bad")
    reshaped = dict(_state(0), step=jnp.zeros(2, jnp.int32))
    with pytest.raises(CheckpointMismatchError, match=r"first difference: \['step'\] \(\) int32 vs \['step'\] \(2,\)"):
        ckpt.restore_latest(reshaped, warnings.append, quarantine=tmp_path / "bad")
    assert warnings == [] and ckpt.all_steps() == [2, 4] and not (tmp_path / "bad").exists()
    assert _equal(ckpt.restore_latest(_state(0), warnings.append)[0], _state(4))


def test_a_skipped_step_is_still_reported_when_an_older_one_is_refused(tmp_path: Path) -> None:
    # Step 4's metadata is damaged, step 2 is sound but of another layout (changed settings): the refusal must not
    # swallow the warning about step 4.
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, _state(2), {})
    ckpt.save(4, _state(4), {})
    (ckpt.step_dir(4) / "meta" / "metadata").write_text("{x")
    fewer = {"params": {"w": _state(0)["params"]["w"]}, "step": _state(0)["step"]}
    warnings: list[str] = []
    with pytest.raises(CheckpointMismatchError, match=r"ck/2: holds a state of another layout"):
        ckpt.restore_latest(fewer, warnings.append, quarantine=tmp_path / "bad")
    assert len(warnings) == 1 and "ck/4: unreadable checkpoint metadata" in warnings[0]
    assert ckpt.all_steps() == [2, 4] and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("damage", ["garbage", "empty step"])
def test_damaged_metadata_falls_back_also_when_the_target_comes_from_it(tmp_path: Path, damage: str) -> None:
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(2, _state(2), {"shape": 64})
    ckpt.save(4, _state(4), {"shape": 64})
    if damage == "garbage":
        (ckpt.step_dir(4) / "meta" / "metadata").write_text("{x")
    else:
        shutil.rmtree(ckpt.step_dir(4))
        ckpt.step_dir(4).mkdir()
    seen: list[int] = []

    def target_for(meta: dict) -> dict:  # as load_run builds its target from the recorded config
        seen.append(meta["step"])
        return _state(0)

    reader = Checkpointer(tmp_path / "ck", read_only=True)
    warnings: list[str] = []
    restored, meta = reader.restore_latest(target_for, warnings.append)
    assert meta["step"] == 2 and _equal(restored, _state(2)) and seen == [2]
    assert reader.all_steps() == [2, 4]  # an empty step directory counts as a step for orbax
    assert len(warnings) == 1 and "ck/4" in warnings[0] and "falling back to step 2" in warnings[0]




# Run in fresh interpreters: pytest turns unraisable-exception output into warnings instead of printing it.
DAMAGED_STEP_SCRIPT = """
import sys
import jax.numpy as jnp, numpy as np
from pathlib import Path
from flax_resnet.checkpoint import Checkpointer

def arrays(seed):
    rng = np.random.default_rng(seed)
    return {f"a{i:03d}": jnp.asarray(rng.normal(size=(2048,)).astype(np.float32)) for i in range(300)}

ckpt = Checkpointer(Path(sys.argv[1]))
ckpt.save(2, arrays(2), {})
ckpt.save(4, arrays(4), {})
files = [p for p in (ckpt.step_dir(4) / "state").rglob("*") if p.is_file()]
victim = max(files, key=lambda p: p.stat().st_size)
victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
restored, meta = ckpt.restore_latest(arrays(0), lambda line: print(line, file=sys.stderr))
assert meta["step"] == 2 and all(np.array_equal(restored[k], arrays(2)[k]) for k in restored)
"""

# What orbax/tensorstore do after a failed read, made deterministic: a thread writes to fd 2 after the
# failure, and an object whose finalizer raises is freed with the error ("Exception ignored in ...").
RUN_QUIETLY_SCRIPT = """
import os, sys, threading, time
from flax_resnet.errors import run_quietly

class Raises:
    def __del__(self):
        raise RuntimeError("Event loop is closed")

def failing():
    pending = Raises()  # held by this frame, so by the error's traceback
    threading.Thread(target=lambda: (time.sleep(0.3), os.write(2, b"Traceback: late read\\n"))).start()
    raise ValueError("bad array")

def fine():
    os.write(2, b"kept\\n")
    return 5

def logs_as_it_loads():
    os.write(2, b"I0000 loading\\nkept too\\n")
    return 6

assert run_quietly(failing) == (None, "ValueError: bad array")
assert run_quietly(fine) == (5, None)
assert run_quietly(logs_as_it_loads, keep=lambda line: not line.startswith("I0000")) == (6, None)
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip


def test_run_quietly_drops_late_output_of_a_failure_and_replays_a_success_s_kept_lines() -> None:
    proc = _python(RUN_QUIETLY_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "kept\nkept too\n"  # without the holding back: the late line and a RuntimeError traceback


def test_a_damaged_step_costs_one_warning_line_not_thousands(tmp_path: Path) -> None:
    # The real case: orbax abandons a read at the first bad array, and tensorstore's other reads in flight
    # printed 58 to ~10,000 lines of tracebacks (measured; how many depends on timing) before run_quietly.
    proc = _python(DAMAGED_STEP_SCRIPT, str(tmp_path / "ck"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "falling back to step 2" in lines[0], lines[:20]
