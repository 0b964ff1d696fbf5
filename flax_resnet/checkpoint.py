"""Orbax checkpoints of a TrainState: atomic, synchronous, the last two kept, verified on restore.

Each checkpoint step directory holds two items: `state` (the TrainState pytree of arrays) and `meta` (JSON:
step, epoch, the run config, class names, the epoch's running metric sums, and a CRC32 digest of every array).
Orbax writes a step into a temporary directory and renames it when complete, so a run killed mid-save
leaves no half-written step that `latest_step` would pick; the digest catches a step damaged afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_resnet.distributed import gather_from_processes
from flax_resnet.errors import one_line, run_quietly

META_FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; str(e) is one line naming the path."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint of another state layout than the run's (changed settings): never quarantined."""


@contextlib.contextmanager
def _orbax_warnings_off() -> Iterator[None]:
    """Orbax's absl warnings held back (errors still shown): where this module reports the problem itself."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(e: BaseException) -> str:
    """errors.one_line without tensorstore's repr of a bound method (noise), at most ~300 characters."""
    line = one_line(e).split(" See full TensorStore details:")[0]
    return line if len(line) <= 300 else line[:300] + "..."


def _host_array(x: Any) -> np.ndarray:
    """A host copy of a (replicated or local) array; the first addressable shard of a replicated one."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


def tree_digest(tree: Any) -> str:
    """CRC32 over every leaf's dtype, shape and bytes, in tree order: detects any damaged or swapped value."""
    return _digests(tree)[0]


def _digests(tree: Any) -> tuple[str, list[str]]:
    """(tree_digest, the same CRC32 of each leaf on its own) in one pass: the second names a damaged array."""
    crc, leaves = 0, []
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(_host_array(leaf))
        header = f"{a.dtype}{a.shape}".encode()
        data = a.view(np.uint8).reshape(-1) if a.size else b""
        crc = zlib.crc32(data, zlib.crc32(header, crc))
        leaves.append(f"{zlib.crc32(data, zlib.crc32(header)):08x}")
    return f"{crc:08x}", leaves


def _leaf_names(tree: Any) -> list[str]:
    """Dotted paths of the leaves, in tree order, as orbax names them in its errors (`params.conv1.kernel`)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in leaves]


def _damaged_array(e: BaseException) -> str | None:
    """The array an orbax/tensorstore read error names deep in its cause chain ('Error reading "params.w/0.0"')."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        found = re.search(r'Error reading "([^"/]+)', str(e))
        if found:
            return found.group(1)
        e = e.__cause__ or e.__context__
    return None


def tree_layout(tree: Any) -> list[str]:
    """'path shape dtype' of every leaf, in tree order: what a restore target must match (no values read)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [f"{jax.tree_util.keystr(path)} {tuple(np.shape(x))} {np.dtype(x.dtype)}" for path, x in leaves]


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete pytree: the restore target for orbax."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Save/restore TrainState pytrees under one directory with orbax's CheckpointManager (max_to_keep=2)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: no such checkpoint directory")
        try:
            with _orbax_warnings_off():  # e.g. that a read-only manager will not save: expected here
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=False,  # a save is complete (renamed into place) when save() returns
                    cleanup_tmp_directories=not read_only,  # leftovers of a run killed mid-save
                    read_only=read_only,
                    create=not read_only,
                )
                self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except Exception as e:
            raise CheckpointError(f"{self.directory}: cannot open checkpoint directory ({_one_line(e)})") from None

    def step_dir(self, step: int) -> Path:
        """The directory holding checkpoint `step`."""
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        """Finalized checkpoint steps, oldest first (temporary, half-written directories never count)."""
        with _orbax_warnings_off():  # a step without orbax's metadata file: one warning per listing, and its
            self._manager.reload()  # restore reports it in our one line anyway
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalized step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write checkpoint `step` synchronously; on failure the older checkpoints stay intact.

        Raises CheckpointError (e.g. disk full) naming the directory; any partial temporary directory is removed.
        """
        digest, leaf_digests = _digests(state)
        layout = tree_layout(state)
        meta = dict(meta, step=int(step), digest=digest, leaf_digests=leaf_digests, layout=layout, format=META_FORMAT)

        def attempt() -> None:
            try:
                self._manager.save(
                    int(step),
                    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True,
                )
                self._manager.wait_until_finished()
            except Exception:
                self._remove_partial(step)
                raise

        # Quietly: on a full disk orbax's and tensorstore's writers still in flight print ~170 tracebacks, which
        # would bury the one line below. tensorstore/orbax wrap OSErrors in several types, hence the search.
        _, error = run_quietly(attempt, describe=lambda e: f"{'disk full' if _is_enospc(e) else 'write failed'}: "
                                                           f"{_one_line(e)}")  # fmt: skip
        if error is not None:
            kept = [s for s in self.all_steps() if s != step]
            previous = f"the previous checkpoint (step {kept[-1]}) is intact" if kept else "no earlier checkpoint"
            raise CheckpointError(f"saving checkpoint step {step} to {self.directory} failed ({error}); {previous}")

    def _remove_partial(self, step: int) -> None:
        with contextlib.suppress(Exception):  # let the item writers still running finish (or fail) first
            self._manager.wait_until_finished()
        time.sleep(0.1)
        for path in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)
        final = self.step_dir(step)
        if final.exists() and step not in self._manager.all_steps():
            shutil.rmtree(final, ignore_errors=True)
        self._manager.reload()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint `step` (config, class names, ...) without reading the arrays."""
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            raise CheckpointError(f"{self.step_dir(step)}: unreadable checkpoint metadata ({_one_line(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or "digest" not in meta:
            raise CheckpointError(f"{self.step_dir(step)}: not a flax_resnet checkpoint (bad metadata)")
        return meta

    def restore(self, step: int, target: Any | Callable[[dict[str, Any]], Any]) -> tuple[Any, dict[str, Any]]:
        """Restore checkpoint `step` into the structure/shardings of `target`; verify its digest.

        `target` may be a function of the step's metadata that builds it (a run loaded from its checkpoint
        alone); it may raise CheckpointError.
        """
        meta = self.read_meta(step)
        if callable(target):
            target = target(meta)
        if "layout" in meta:  # older checkpoints have none; their mismatches surface as restore errors below
            want = tree_layout(target)
            if meta["layout"] != want:
                diff = next((f"{a} vs {b}" for a, b in zip(meta["layout"], want, strict=False) if a != b), "")
                raise CheckpointMismatchError(
                    f"{self.step_dir(step)}: holds a state of another layout ({len(meta['layout'])} arrays) than "
                    f"this run builds ({len(want)}{'; first difference: ' + diff if diff else ''}): "
                    "settings that shape the state changed (e.g. --momentum 0 has no momentum buffers); resume "
                    "with the run's own settings (its config.json) or use another --workdir"
                )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(target)))

        def describe(e: Exception) -> str:
            array = _damaged_array(e)
            return (f"array {array}: " if array else "") + _one_line(e)

        restored, error = run_quietly(lambda: self._manager.restore(step, args=args).state, describe=describe)
        if error is not None:
            raise CheckpointError(f"{self.step_dir(step)}: unreadable checkpoint ({error})")
        if jax.tree.structure(restored) != jax.tree.structure(target):
            raise CheckpointError(f"{self.step_dir(step)}: checkpoint does not match the model's state structure")
        digest = tree_digest(restored)
        if digest != meta["digest"]:
            leaf_digests = _digests(restored)[1]  # a second pass, only to name what changed
            recorded = meta.get("leaf_digests")  # older checkpoints have none
            names = []
            if isinstance(recorded, list) and len(recorded) == len(leaf_digests):
                names = [n for n, a, b in zip(_leaf_names(restored), leaf_digests, recorded, strict=True) if a != b]
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            damaged = f" in {', '.join(names[:3])}{more}" if names else ""
            raise CheckpointError(
                f"{self.step_dir(step)}: checkpoint is corrupt{damaged} (digest {digest} != recorded {meta['digest']})"
            )
        return restored, meta

    def restore_latest(
        self,
        target: Any | Callable[[dict[str, Any]], Any],
        warn: Callable[[str], None],
        *,
        quarantine: Path | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restore the newest readable checkpoint, or None if there is none.

        `target` as for `restore`. An unreadable newer step (metadata or arrays) is reported through `warn`
        (one line) and skipped. With `quarantine`, the skipped steps are moved there once an older step has
        restored, so a resumed run can save those step numbers again; if no step restores, nothing is moved
        and this raises: the cause may be the machine's (out of memory, a full or unreadable disk), not the
        files, and a rerun must find the checkpoints where they were. With many processes (one shared
        directory), only process 0 moves them, and the others wait for it.
        """
        steps = self.all_steps()
        errors: dict[int, str] = {}
        restored: tuple[int, tuple[Any, dict[str, Any]]] | None = None
        for step in reversed(steps):
            try:
                restored = (step, self.restore(step, target))
                break
            except CheckpointMismatchError:  # sound but made with other settings: nothing to move or fall back to
                for message in errors.values():
                    warn(f"warning: {message}")
                raise
            except CheckpointError as e:
                errors[step] = str(e)
        # Every process must resume from the same step, and move the same steps aside: a transient read error
        # on one host only would otherwise split them (or leave process 0 alone at the barrier below).
        chosen = _same_on_every_process(restored[0] if restored else -1)
        if chosen is None:
            raise CheckpointError(
                f"{self.directory}: the processes could not all read the same newest checkpoint; nothing was "
                "moved: rerun the same command"
            )
        if chosen < 0:
            if not errors:
                return None
            newest, *older = errors.values()
            for message in older:  # the newest one is in the error itself
                warn(f"warning: {message}")
            kept = ""
            if not self.read_only:  # a resume: say that a rerun finds the checkpoints where they were
                kept = (
                    "; nothing was moved or deleted: if the cause is the machine's (memory, disk), the same "
                    "command resumes once it is fixed"
                )
            raise CheckpointError(f"no readable checkpoint in {self.directory} (newest error: {newest}){kept}")
        skipped = [s for s in steps if s > chosen]
        moved = {}
        if skipped and quarantine is not None and not self.read_only:
            moved = self._quarantine(skipped, quarantine)
        for bad in reversed(skipped):
            where = f"; moved to {moved[bad]}" if bad in moved else ""
            message = errors.get(bad, f"{self.step_dir(bad)}: unreadable on another process")
            warn(f"warning: {message}{where}; falling back to step {chosen}")
        assert restored is not None
        return restored[1]

    def _quarantine(self, steps: list[int], quarantine: Path) -> dict[int, Path]:
        """Move unreadable `steps` into `quarantine` (process 0 only: one shared directory), let every process
        see the change, and return where each went (empty on the other processes)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = {}
        try:
            if jax.process_index() == 0:
                quarantine.mkdir(parents=True, exist_ok=True)
                for step in steps:
                    moved[step] = quarantine / f"{step}-{stamp}"
                    shutil.move(str(self.step_dir(step)), str(moved[step]))
        finally:  # also when a move fails: the other processes must not wait for process 0 forever
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("flax_resnet checkpoint quarantine")
            self._manager.reload()
        return moved

    def close(self) -> None:
        """Wait for pending work and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _same_on_every_process(value: int) -> int | None:
    """`value` if every process passed the same one (a collective with many processes), else None."""
    return value if (gather_from_processes([value]) == value).all() else None


def _is_enospc(e: BaseException) -> bool:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "ENOSPC" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def has_step_dirs(directory: str | Path) -> bool:
    """Whether `directory` holds numbered step folders: saved checkpoints (a save in progress or cut short has a
    suffix, `5.orbax-checkpoint-tmp-...`). No orbax call, so nothing is created or synchronized."""
    p = Path(directory)
    return p.is_dir() and any(c.is_dir() and c.name.isdigit() for c in p.iterdir())


def find_checkpoint(path: str | Path) -> tuple[Path, int | None]:
    """Resolve a workdir, a checkpoints directory or one step directory to (checkpoints dir, step or None=latest).

    Raises CheckpointError naming `path` when it is none of these.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a run directory or checkpoint (expected a workdir or a checkpoint step dir)")
    if (p / "checkpoints").is_dir():
        return p / "checkpoints", None
    if p.name.isdigit() and (p / "meta").is_dir() and (p / "state").is_dir():
        return p.parent, int(p.name)
    if has_step_dirs(p):
        return p, None
    raise CheckpointError(f"{p}: no checkpoints found (expected a workdir, its checkpoints/ dir, or a step dir)")
