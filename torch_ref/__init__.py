"""PyTorch reference ResNets with torchvision's state-dict names; the ground truth of the parity suite."""

from torch_ref.models import ARCHS, VARIANTS, ResNet, create_model

__all__ = ["ARCHS", "VARIANTS", "ResNet", "create_model"]
