"""flax-resnet: ResNet-18..152 for CIFAR-10 in Flax NNX, with torch weight exchange.

Public API (stable): `create_model`, `predict`, `normalize` (uint8 images -> the normalized float input that
models take), `load_torch_state_dict`, `to_torch_state_dict`, `load_weights_file`, `save_safetensors`,
`count_params`, `weights_metadata` (what makes a saved file usable by the scripts), and the name tables
`ARCHS` / `VARIANTS`.

The names are imported on first use (PEP 562): `import flax_resnet.hugepages`, which the CLIs run before
re-executing themselves, must not load jax and flax only to load them again in the new process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ARCHS": "models",
    "VARIANTS": "models",
    "ResNet": "models",
    "count_params": "models",
    "create_model": "models",
    "predict": "models",
    "normalize": "data",
    "StateDictError": "convert",
    "WeightsFileError": "convert",
    "load_torch_state_dict": "convert",
    "load_weights_file": "convert",
    "save_safetensors": "convert",
    "to_torch_state_dict": "convert",
    "weights_metadata": "convert",
}

__all__ = [  # = sorted(_EXPORTS), spelled out for linters and readers
    "ARCHS",
    "VARIANTS",
    "ResNet",
    "StateDictError",
    "WeightsFileError",
    "count_params",
    "create_model",
    "load_torch_state_dict",
    "load_weights_file",
    "normalize",
    "predict",
    "save_safetensors",
    "to_torch_state_dict",
    "weights_metadata",
]

if TYPE_CHECKING:
    from flax_resnet.convert import (
        StateDictError,
        WeightsFileError,
        load_torch_state_dict,
        load_weights_file,
        save_safetensors,
        to_torch_state_dict,
        weights_metadata,
    )
    from flax_resnet.data import normalize
    from flax_resnet.models import ARCHS, VARIANTS, ResNet, count_params, create_model, predict


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its module on first use; or the submodule `name`
    (`flax_resnet.models` after a bare `import flax_resnet`, as when the package imported them eagerly)."""
    if name not in _EXPORTS:
        try:
            return importlib.import_module(f"flax_resnet.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"flax_resnet.{name}":  # the submodule exists; something it imports does not
                raise
            raise AttributeError(f"module 'flax_resnet' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"flax_resnet.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
