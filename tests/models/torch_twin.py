"""A PyTorch twin of ``segmentation_models_pytorch.Unet('resnet34')`` for the import tests.

torchvision and segmentation_models_pytorch do not import beside the CPU torch build of this
project, so this file rebuilds the model from their sources with exactly their state-dict key
names: the encoder is torchvision's ``ResNet`` without ``avgpool``/``fc`` (smp's
``ResNetEncoder``), the decoder smp's ``UnetDecoder`` (>= 0.4: each block interpolates to the
next skip's size with ``F.interpolate(mode="nearest")``), the head ``SegmentationHead``.
Widths and depths are arguments so tests can use small ones. Imported only where torch exists.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """torchvision ResNet's layers; ``forward`` returns smp's feature list
    ``[input, stem, layer1, layer2, layer3, layer4]``."""

    def __init__(self, in_channels=3, widths=(64, 64, 128, 256, 512), depths=(3, 4, 6, 3), with_fc=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for s, depth in enumerate(depths):
            blocks = [BasicBlock(widths[s] if b == 0 else widths[s + 1], widths[s + 1],
                                 (1 if s == 0 else 2) if b == 0 else 1) for b in range(depth)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        if with_fc:  # a torchvision classifier's state dict has fc.* too
            self.fc = nn.Linear(widths[4], 1000)

    def forward(self, x):
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        x = self.maxpool(x)
        for s in range(4):
            x = getattr(self, f"layer{s + 1}")(x)
            features.append(x)
        return features


class Conv2dReLU(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, in_channels, skip_channels, out_channels):
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)

    def forward(self, x, height, width, skip=None):
        x = F.interpolate(x, size=(height, width), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    def __init__(self, encoder_channels, decoder_channels):
        super().__init__()
        encoder_channels = encoder_channels[1:][::-1]
        in_channels = [encoder_channels[0]] + list(decoder_channels[:-1])
        skip_channels = list(encoder_channels[1:]) + [0]
        self.center = nn.Identity()
        self.blocks = nn.ModuleList([DecoderBlock(i, s, o) for i, s, o in
                                     zip(in_channels, skip_channels, decoder_channels)])

    def forward(self, features):
        shapes = [f.shape[2:] for f in features][::-1]
        features = features[1:][::-1]
        x = self.center(features[0])
        skips = features[1:]
        for i, block in enumerate(self.blocks):
            height, width = shapes[i + 1]
            x = block(x, height, width, skips[i] if i < len(skips) else None)
        return x


class Unet(nn.Module):
    def __init__(self, in_channels=3, classes=1, widths=(64, 64, 128, 256, 512), depths=(3, 4, 6, 3),
                 decoder_channels=(256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, widths, depths)
        self.decoder = UnetDecoder((in_channels, *widths), decoder_channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], classes, 3, padding=1))

    def forward(self, x):
        return self.segmentation_head(self.decoder(self.encoder(x)))


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND random batch-norm statistics (so eval mode is a real test), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
    return module.eval()
