"""flax-resnet: ResNet-18..152 for CIFAR-10 in Flax NNX, with torch weight exchange.

Public API (stable): `create_model`, `predict`, `load_torch_state_dict`, `to_torch_state_dict`,
`load_weights_file`, `save_safetensors`, `count_params`, and the name tables `ARCHS` / `VARIANTS`.
"""

from flax_resnet.convert import (
    StateDictError,
    WeightsFileError,
    load_torch_state_dict,
    load_weights_file,
    save_safetensors,
    to_torch_state_dict,
)
from flax_resnet.models import ARCHS, VARIANTS, ResNet, count_params, create_model, predict

__all__ = [
    "ARCHS",
    "VARIANTS",
    "ResNet",
    "StateDictError",
    "WeightsFileError",
    "count_params",
    "create_model",
    "load_torch_state_dict",
    "load_weights_file",
    "predict",
    "save_safetensors",
    "to_torch_state_dict",
]
