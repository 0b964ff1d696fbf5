"""Weight exchange between torch state dicts and Flax ResNets: the only module that knows both schemes.

Flax module paths mirror torchvision's (`layer1.0.downsample.0`), so a key maps by joining the path and
renaming the leaf; the table below says how each leaf is renamed and laid out (OIHW <-> HWIO, Linear
transposed, BatchNorm names). Numpy in, numpy out; loading is strict and all-or-nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from flax_resnet.errors import one_line
from flax_resnet.models import require_model

# (flax leaf name, ndim) -> (torch leaf name, flax->torch layout, torch->flax layout)
Layout = Callable[[np.ndarray], np.ndarray]
_LEAF_TABLE: dict[tuple[str, int], tuple[str, Layout, Layout]] = {
    ("kernel", 4): ("weight", lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),  # HWIO/OIHW
    ("kernel", 2): ("weight", lambda a: a.T, lambda a: a.T),  # Linear (in, out) / (out, in)
    ("bias", 1): ("bias", lambda a: a, lambda a: a),
    ("scale", 1): ("weight", lambda a: a, lambda a: a),
    ("mean", 1): ("running_mean", lambda a: a, lambda a: a),
    ("var", 1): ("running_var", lambda a: a, lambda a: a),
    ("num_batches_tracked", 0): (
        "num_batches_tracked",
        lambda a: a.astype(np.int64),
        lambda a: a.astype(np.int32),
    ),
}


class StateDictError(ValueError):
    """A state dict that does not fit the model; the message lists every problem at once.

    `problems` holds the same lists by kind ("missing", "unexpected", "mis-shaped", "out of range", "skip matches
    no key"); `summary()` is a bounded line of them for command lines."""

    def __init__(self, what: str, problems: Mapping[str, list[str]], hint: str = ""):
        self.what = what
        self.problems = {kind: list(items) for kind, items in problems.items() if items}
        self.hint = hint
        super().__init__(self._line(None))

    def _line(self, limit: int | None) -> str:
        parts = []
        for kind, items in self.problems.items():
            shown = items if limit is None or len(items) <= limit else [*items[:limit], f"({len(items) - limit} more)"]
            count = "" if kind.startswith("skip") else f"{len(items)} "
            parts.append(f"{count}{kind}: {', '.join(shown)}")
        return f"state dict does not match {self.what}: " + "; ".join(parts) + (f" ({self.hint})" if self.hint else "")

    def summary(self, limit: int = 4) -> str:
        """The message with at most `limit` names of each kind (a whole other architecture lists hundreds)."""
        return self._line(limit)


class WeightsFileError(ValueError):
    """A weights file that cannot be read (missing, truncated, not safetensors, or unsafe pickle)."""


_INT32 = np.iinfo(np.int32)


def _host_array(value: Any) -> np.ndarray:
    """A host numpy view or copy of a numpy, JAX or torch array (any device), dtype kept: a torch bfloat16 tensor
    becomes ml_dtypes' bfloat16, bit for bit, which numpy alone cannot hold."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch

            return value.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        value = value.numpy()
    return np.asarray(value)


def _to_numpy(value: Any) -> np.ndarray:
    """A loaded value as numpy that torch takes too: bfloat16 (torch's, or ml_dtypes' from safetensors' numpy
    reader where jax is loaded) widened to float32, which holds it exactly."""
    value = _host_array(value)
    return value.astype(np.float32) if value.dtype.name == "bfloat16" else value


def _torch_keys(
    model: nnx.Module, only: type[nnx.Variable] = nnx.Variable
) -> dict[str, tuple[nnx.Variable, tuple[str, Layout, Layout]]]:
    """torch key -> (variable, table row) for every variable of the model (of type `only`)."""
    require_model(model, "weight conversion")  # e.g. a TrainState: its tree paths would pass for torch keys
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, only)):
        leaf = path[-1]
        value = var.get_value()  # not var[...]: an abstract (eval_shape) model's values cannot be indexed
        row = _LEAF_TABLE.get((leaf, value.ndim))
        if row is None:
            raise TypeError(f"no torch mapping for Flax variable {'/'.join(map(str, path))} with shape {value.shape}")
        key = ".".join(str(p) for p in path[:-1]) + "." + row[0]
        out[key] = (var, row)
    return out


def to_torch_state_dict(model: nnx.Module, only: type[nnx.Variable] = nnx.Variable) -> dict[str, np.ndarray]:
    """Export the model as a torch-named state dict of numpy arrays; as tensors (`torch.from_numpy` of each) it
    loads strict into torch_ref/torchvision.

    `only=nnx.BatchStat` (or `nnx.Param`) exports just those variables, e.g. to read BN running statistics.
    """
    variables = _torch_keys(model, only)
    if any(_abstract(var) for var, _ in variables.values()):
        raise TypeError("the model is abstract (nnx.eval_shape): it has shapes but no values to export; load "
                        "weights into it first (load_torch_state_dict)")
    return {key: np.array(row[1](np.asarray(var[...])), order="C") for key, (var, row) in variables.items()}


def torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Torch key -> shape in torch's layout, for every variable of `model` (an `nnx.eval_shape` model will do:
    nothing is read or allocated), e.g. to check a state dict against a model before building it."""
    return {key: _torch_shape(var, row) for key, (var, row) in _torch_keys(model).items()}


def _torch_shape(var: nnx.Variable, row: tuple[str, Layout, Layout]) -> tuple[int, ...]:
    return row[1](np.broadcast_to(np.float32(0), var.get_value().shape)).shape  # zero-strided: nothing allocated


def match_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, Any],
    *,
    skip: str | Iterable[str] = (),
    what: str = "model",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The entries of `state_dict` that a model with torch keys and shapes `expected` loads strictly, as numpy
    in torch's layout, and the model's keys that `skip` leaves at their own values (sorted).

    Framework-neutral: `load_torch_state_dict` and the torch reference trainer check a state dict the same way.
    `skip` names torch modules or keys (`"fc"`, `"layer4.1.bn2.weight"`) to leave out on both sides; a name
    that matches nothing is an error (a typo would skip nothing). A missing `num_batches_tracked` (state dicts
    from before torch counted batches) loads as 0. Every missing, unexpected and mis-shaped key, and every
    unmatched skip name, is reported together in one StateDictError.
    """
    if not isinstance(state_dict, Mapping):  # e.g. the module itself, or a file's path
        raise TypeError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}: pass "
            "module.state_dict(), or load_weights_file(path) for a file"
        )
    names = [name.rstrip(".") for name in ((skip,) if isinstance(skip, str) else skip)]

    def skipped(key: Any, name: str) -> bool:
        return isinstance(key, str) and (key == name or key.startswith(name + "."))

    def is_skipped(key: Any) -> bool:
        return any(skipped(key, name) for name in names)

    kept = sorted(key for key in expected if is_skipped(key))
    chosen: dict[str, np.ndarray] = {}
    missing, mis_shaped, out_of_range = [], [], []
    for key, want in expected.items():
        if is_skipped(key):
            continue
        if key not in state_dict:
            if key.rsplit(".", 1)[-1] == "num_batches_tracked":
                chosen[key] = np.zeros((), np.int64)
            else:
                missing.append(key)
            continue
        raw = _to_numpy(state_dict[key])
        if raw.shape != tuple(want):  # compared before any layout change, which a wrong rank would break
            mis_shaped.append(f"{key} {raw.shape} (expected {tuple(want)})")
            continue
        if key.rsplit(".", 1)[-1] == "num_batches_tracked" and not _INT32.min <= int(raw) <= _INT32.max:
            out_of_range.append(f"{key} {int(raw)} (the model counts in int32)")  # it would wrap silently
            continue
        chosen[key] = raw
    # str: a non-str key must not break the report
    unexpected = sorted(str(k) for k in set(state_dict) - set(expected) if not is_skipped(k))
    unmatched = [repr(n) for n in names if not any(skipped(k, n) for k in (*expected, *state_dict))]
    if missing or unexpected or mis_shaped or out_of_range or unmatched:  # sorted: the same line in any key order
        missing.sort()
        mis_shaped.sort()
        raise StateDictError(
            what,
            {"missing": missing, "unexpected": unexpected, "mis-shaped": mis_shaped, "out of range": out_of_range,
             "skip matches no key": unmatched},
            _prefix_hint(missing, unexpected),
        )
    return chosen, kept


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """When every missing key is present under one prefix (DataParallel's "module.", torch.compile's
    "_orig_mod."), say so: the key lists alone show the same names twice without saying why."""
    if not missing:
        return ""
    found = set(unexpected)
    for key in unexpected:
        prefix = key.removesuffix(missing[0])
        if prefix != key and prefix.endswith(".") and all(prefix + m in found for m in missing):
            return (f"the state dict's keys carry the prefix {prefix!r}, a wrapper's (DataParallel, torch.compile): "
                    "strip it from each key first, or save the inner model's state_dict()")
    return ""


def load_torch_state_dict(
    model: nnx.Module, state_dict: Mapping[str, Any], *, skip: str | Iterable[str] = ()
) -> list[str]:
    """Load a torch state dict (tensors or numpy) into `model` in place; strict and all-or-nothing. `model` may
    be abstract (`nnx.eval_shape(lambda: create_model(...))`), which skips the random init; it then gets values.

    Every missing, unexpected and mis-shaped key is reported together in one StateDictError, and the
    model is left unchanged. A missing `num_batches_tracked` (state dicts from before torch counted batches) is
    taken as 0, in any state dict (torch forgives the gap only in one saved before it counted, and keeps the
    module's own count then). The count changes nothing unless BatchNorm's momentum is None.

    `skip` names torch modules or keys (`"fc"`, `"layer4.1.bn2.weight"`) to leave out on both sides, e.g. to
    take an ImageNet backbone into a model with another head: the model keeps its own values there, the state
    dict's entries there are ignored, and a name that matches nothing is an error (a typo would skip nothing).
    Returns the model's keys that kept their values, sorted.
    """
    variables = _torch_keys(model)
    what = f"{getattr(model, 'arch', 'model')}/{getattr(model, 'variant', '?')}"
    expected = {key: _torch_shape(var, row) for key, (var, row) in variables.items()}
    chosen, kept = match_state_dict(expected, state_dict, skip=skip, what=what)
    unset = [key for key in kept if _abstract(variables[key][0])]
    if unset:  # an nnx.eval_shape model has shapes only: what skip leaves would stay without a value
        raise TypeError(
            f"the model is abstract (nnx.eval_shape) and skip would leave {len(unset)} of its values unset "
            f"({', '.join(unset[:3])}{', ...' if len(unset) > 3 else ''}): load a whole state dict into it, or "
            "skip into a model from create_model"
        )
    updates = []
    for key, raw in chosen.items():
        var, row = variables[key]
        # A host copy (on CPU a device array may alias the caller's buffer, e.g. torch's, which torch then
        # mutates), then device_put: jnp.array would compile a small program for every distinct shape.
        updates.append((var, jax.device_put(np.array(row[2](raw), dtype=var.get_value().dtype, copy=True))))
    for var, value in updates:
        var.set_value(value)  # not var[...] = : an abstract model's values cannot be indexed
    return kept


def _abstract(var: nnx.Variable) -> bool:
    return isinstance(var.get_value(), jax.ShapeDtypeStruct)


def load_weights_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a torch state dict from `.safetensors`, or from `.pt`/`.pth` with torch.load(weights_only=True);
    bfloat16 tensors come back as float32 (exact) from either, so that torch and numpy both take them."""
    path = Path(path)
    if path.is_dir():  # e.g. a run's workdir, which evaluate.py/predict.py/export.py take
        inner = path / "model.safetensors"
        where = f"its weights: {inner}" if inner.is_file() else f"scripts/export.py {path} W.safetensors writes them"
        raise WeightsFileError(f"{path} is a directory, not a weights file ({where})")
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return {k: _to_numpy(v) for k, v in read_safetensors(path)[0].items()}
    if path.suffix in (".pt", ".pth"):
        import pickle

        import torch

        if _is_torchscript(path):  # torch.load refuses it after a warning, with advice about weights_only
            raise WeightsFileError(
                f"{path}: a TorchScript archive (torch.jit.save), not a state dict: save "
                "torch.jit.load(path).state_dict() with torch.save instead"
            )
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's message is advice for torch.load's caller
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if found is None:  # e.g. "Unsupported operand": bytes that are no pickle torch wrote
                raise WeightsFileError(f"{path}: not a readable torch file (damaged, or not a torch.save)") from None
            raise WeightsFileError(
                f"{path}: refused to load: it pickles Python objects ({found.group(1)}), not only tensors (a whole "
                "model? save its state_dict() instead); loading it could run code from the file"
            ) from None
        except Exception as e:  # torch.load raises RuntimeError, EOFError, OSError, KeyError... for broken files
            raise WeightsFileError(f"{path}: not a readable torch file ({one_line(e, limit=200)})") from None
        obj = _inner_state_dict(obj)
        if not isinstance(obj, Mapping) or not _all_tensors(obj):
            keys = f" (its keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) and obj else ""
            raise WeightsFileError(f"{path}: does not hold a state dict of tensors{keys}")
        return {k: _to_numpy(v) for k, v in obj.items()}
    raise WeightsFileError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors, .pt or .pth")


def non_finite(state_dict: Mapping[str, np.ndarray]) -> str | None:
    """'non-finite values (nan/inf) in KEY, ...' for a state dict with NaN or inf in a float tensor, else None:
    safetensors has no checksum, so bytes damaged on disk can be such values in a file that reads without error."""
    bad = [key for key, value in state_dict.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if not bad:
        return None
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"non-finite values (nan/inf) in {', '.join(bad[:3])}{more}"


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save writes a zip like torch.save's, with the pickled constants of its code beside the data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _all_tensors(obj: Mapping) -> bool:
    return all(hasattr(v, "detach") for v in obj.values())


# Where training checkpoints keep the model's state dict: Lightning's and many loops' "state_dict", torchvision's
# reference scripts' "model", torch's tutorial's "model_state_dict".
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


def _inner_state_dict(obj: Any) -> Any:
    """A training checkpoint's state dict (the first of _STATE_DICT_KEYS holding tensors only), else `obj`."""
    if not isinstance(obj, Mapping) or _all_tensors(obj):
        return obj
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and _all_tensors(inner):
            return inner
    return obj


WEIGHTS_FORMAT = "flax_resnet torch state dict"  # the metadata's "format" in files this project writes


def weights_metadata(
    arch: str,
    variant: str,
    class_names: Sequence[str],
    step: int,
    holdout: int = 0,
    holdout_digest: str | None = None,
    digests: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The `.safetensors` metadata that make a weights file usable on its own (scripts/export.py and torch_ref's
    model.safetensors): the model, its classes in order, the input it expects, the step, for a `--holdout`
    run how many images it held out and their digest (`data.image_set_digest`), so that it is evaluated on
    those, never on the test set, and where given the digests of its data's splits (`data.data_record`'s
    `train_digest`/`test_digest`), by which a torch run knows its data again."""
    from flax_resnet.data import CIFAR10_MEAN, CIFAR10_STD

    metadata = {
        "format": WEIGHTS_FORMAT,
        "arch": arch,
        "variant": variant,
        "num_classes": str(len(class_names)),
        "class_names": json.dumps(list(class_names)),
        "input": f"RGB NCHW, x / 255 normalized by mean {json.dumps(CIFAR10_MEAN)} std {json.dumps(CIFAR10_STD)}",
        "step": str(step),
    }
    if holdout:
        metadata["holdout"] = str(holdout)
    if holdout and holdout_digest is not None:  # none: a run from before digests (evaluation then refuses it)
        metadata["holdout_digest"] = holdout_digest
    metadata.update(digests or {})
    return metadata


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A `.safetensors` file's tensors and header metadata ({} if none), read in one open (a file replaced
    meanwhile, e.g. a torch run's model.safetensors each epoch, cannot mix two versions); WeightsFileError
    if it cannot be read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), "np") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError) as e:  # TypeError: a dtype numpy lacks
        raise WeightsFileError(f"{path}: not a readable safetensors file ({one_line(e)})") from None


def save_safetensors(
    state_dict: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a state dict of numpy, JAX or torch arrays (e.g. a torch module's `state_dict()`, bfloat16 kept) as
    `.safetensors` atomically (temp file, fsync, rename), with the umask's mode; `metadata` (str -> str) goes into
    the file's header. A symlink `path` is written through, not replaced.

    Raises OSError naming the path when it cannot be written (no temporary file is left behind), TypeError for
    keys, arrays or metadata that safetensors cannot store.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    arrays = {}
    for key, value in state_dict.items():
        array = np.array(_host_array(value), order="C")  # a copy: the caller's arrays may change while it writes
        if not isinstance(key, str) or not (array.dtype.kind in "biuf" or array.dtype.name == "bfloat16"):
            raise TypeError(f"cannot store {key!r} ({array.dtype}) in safetensors: keys are str, values numeric arrays")
        arrays[key] = array
    bad = [f"{k!r}: {v!r}" for k, v in (metadata or {}).items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:  # safetensors' own message names neither the entry nor the fix
        raise TypeError(f"metadata are str -> str; got {', '.join(bad)} (e.g. str(step), json.dumps(names))")
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # replacing the link would leave its target stale
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(path.parent))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(arrays, str(tmp), metadata=dict(metadata) if metadata else None)
        tmp.chmod(0o666 & ~_umask())  # safetensors creates its files 0600; weights are meant to be shared
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes on disk before the rename makes them the file: a crash leaves old or new
        finally:
            os.close(fd)
        tmp.replace(path)
        with contextlib.suppress(OSError):  # the rename itself, where the filesystem lets a directory be synced
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        raise OSError(f"{path}: cannot write ({e.strerror or e})") from None
    except SafetensorError as e:  # how safetensors reports its own I/O failures
        raise OSError(f"{path}: cannot write ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
