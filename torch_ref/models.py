"""PyTorch reference ResNets (cifar / imagenet / article variants) with torchvision's state-dict names.

These are the ground truth the Flax models are checked against: `imagenet` is key-for-key torchvision's
`resnetN`, `article` reproduces the source tutorial's quirks, `cifar` is the usual CIFAR ResNet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
VARIANTS = ("cifar", "imagenet", "article")
WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)


def check_names(arch: str, variant: str) -> None:
    """Raise ValueError naming the valid choices when `arch` or `variant` is unknown."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid choices: {', '.join(VARIANTS)}")


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; `conv_bias` reproduces the article's biased convs."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, projection: bool, conv_bias: bool = False):
        super().__init__()
        self.conv1 = _conv(cin, width, 3, stride, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(_conv(cin, width, 1, stride), nn.BatchNorm2d(width)) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 to 4x width, with a residual."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, projection: bool, conv_bias: bool = False):
        super().__init__()
        del conv_bias  # the article's bottleneck convs have no bias
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, cout, 1)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout)) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet over NCHW inputs; `variant` picks stem, shortcut rule and head (README, "Variants and parameter
    counts")."""

    def __init__(self, arch: str, variant: str = "cifar", num_classes: int = 10):
        super().__init__()
        check_names(arch, variant)
        kind, depths = ARCHS[arch]
        block: Callable[..., nn.Module] = BasicBlock if kind == "basic" else Bottleneck
        expansion = 1 if kind == "basic" else 4
        self.arch, self.variant = arch, variant
        if variant == "cifar":
            self.conv1 = _conv(3, 64, 3)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = _conv(3, 64, 7, stride=2)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        for s, (width, stride, n) in enumerate(zip(WIDTHS, STRIDES, depths, strict=True)):
            blocks = []
            for b in range(n):
                st = stride if b == 0 else 1
                cout = width * expansion
                projection = (b == 0 and variant == "article") or st != 1 or cin != cout
                blocks.append(block(cin, width, st, projection, conv_bias=variant == "article"))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        # torchvision's module (parameter-free: the state dict is unchanged), so that code reading model.avgpool,
        # e.g. a feature extractor, works; the article variant flattens its 1x1 map instead.
        self.avgpool: nn.Module = nn.Identity() if variant == "article" else nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of each of the four stages (for shape checks)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = [x]
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if self.variant == "article" and (x.shape[-1] != 1 or x.shape[-2] != 1):
            raise ValueError(
                f"the article variant needs a 1x1 final feature map (32x32 inputs); got {tuple(x.shape[-2:])}"
            )
        return self.fc(torch.flatten(self.avgpool(x), 1))


def create_model(arch: str, variant: str = "cifar", num_classes: int = 10) -> ResNet:
    """Build a reference ResNet; unknown names raise ValueError naming the valid choices."""
    return ResNet(arch, variant, num_classes)
