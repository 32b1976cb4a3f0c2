"""ResNet baselines (He et al., arXiv 1512.03385) with torchvision/timm parameter names.

Bottleneck blocks stride in the 3x3 convolution ("ResNet v1.5"), as torchvision's and timm's `tv_in1k` weights.
`num_classes=0` builds the trunk without its classifier (timm's convention), and `norm_layer` swaps BatchNorm for
another normalisation (DETR's backbone uses frozen BatchNorm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register


@dataclass(frozen=True)
class ResNetConfig:
    block: str  # "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1 with 4x expansion)
    layers: tuple[int, int, int, int]
    width: int = 64
    num_classes: int = 1000  # 0: no classifier, the trunk only

    @property
    def num_features(self) -> int:
        return self.width * 8 * self.expansion

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    def convs(self, img_size: int) -> Iterator[tuple[int, int, int, int]]:
        """(in_channels, out_channels, kernel, output side) of every convolution, in order."""

        def out(side: int, k: int, s: int, p: int) -> int:
            return (side + 2 * p - k) // s + 1

        side = out(img_size, 7, 2, 3)
        yield 3, self.width, 7, side
        side = out(side, 3, 2, 1)  # max pool
        cin = self.width
        for stage, blocks in enumerate(self.layers):
            planes = self.width * 2**stage
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                new_side = out(side, 3, stride, 1)
                if self.block == "bottleneck":
                    yield cin, planes, 1, side
                    yield planes, planes, 3, new_side
                    yield planes, planes * 4, 1, new_side
                else:
                    yield cin, planes, 3, new_side
                    yield planes, planes, 3, new_side
                if stride != 1 or cin != planes * self.expansion:
                    yield cin, planes * self.expansion, 1, new_side  # downsample projection
                cin, side = planes * self.expansion, new_side

    def num_params(self, img_size: int = 224) -> int:
        convs = list(self.convs(img_size))  # parameter shapes do not depend on the input size
        weights = sum(ci * co * k * k for ci, co, k, _ in convs)
        batchnorms = sum(2 * co for _, co, _, _ in convs)
        return weights + batchnorms + self.num_features * self.num_classes + self.num_classes

    def conv_macs(self, img_size: int) -> int:
        return sum(ci * co * k * k * side * side for ci, co, k, side in self.convs(img_size))

    def macs(self, img_size: int) -> int:
        return self.conv_macs(img_size) + self.num_features * self.num_classes


NormLayer = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, norm: NormLayer):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, norm: NormLayer):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)) + shortcut)


class ResNet(nn.Module):
    # The stages, added by name in __init__'s loop (timm's and torchvision's state-dict keys), declared for the type
    # checker.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, cfg: ResNetConfig, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.cfg = cfg
        block = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(3, cfg.width, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(cfg.width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = cfg.width
        for stage, blocks in enumerate(cfg.layers):
            planes, stride = cfg.width * 2**stage, 1 if stage == 0 else 2
            layers = []
            for i in range(blocks):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or cin != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(cin, planes * block.expansion, 1, s, bias=False),
                        norm_layer(planes * block.expansion),
                    )
                layers.append(block(cin, planes, s, downsample, norm_layer))
                cin = planes * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, cfg.num_classes) if cfg.num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, H, W) -> (B, w, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # -> (B, 8w·e, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))  # -> (B, num_classes)


def build_resnet(cfg: ResNetConfig, *, img_size: int, attention: str = "sdpa") -> ResNet:
    # Convolutional: any input size works, and there is no attention to choose an implementation for.
    return ResNet(cfg)


# name, block, blocks per stage. torchvision's evaluation transform: bilinear resize to 256, center crop 224;
# timm hosts torchvision's weights as NAME.tv_in1k.
VARIANTS = [
    ("resnet18", "basic", (2, 2, 2, 2)),
    ("resnet34", "basic", (3, 4, 6, 3)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)),
    ("resnet101", "bottleneck", (3, 4, 23, 3)),
    ("resnet152", "bottleneck", (3, 8, 36, 3)),
]

for name, block, layers in VARIANTS:
    register(
        ModelSpec(
            name=name,
            family="resnet",
            arch=ResNetConfig(block, layers),
            preprocess=PreprocessConfig(224, crop_pct=0.875, interpolation="bilinear"),
            builder=build_resnet,
            hub_id=f"{name}.tv_in1k",
        )
    )

register(
    ModelSpec(
        name="test_resnet",
        family="resnet",
        arch=ResNetConfig("bottleneck", (1, 1, 1, 1), width=8),
        preprocess=PreprocessConfig(64, interpolation="bilinear"),
        builder=build_resnet,
        for_tests=True,
    )
)
