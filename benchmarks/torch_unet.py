"""The PyTorch reference for the speed benchmarks: jaxseg's U-Nets and loss written in torch.

Same architecture as ``jaxseg.models.unet.UNet`` / ``unet3d.UNet3D`` (two bias-free 3x3 convs
with batch norm and ReLU per level, dropout in the bottleneck and decoder blocks, 2x2 max pool,
2x2 stride-2 transposed convs with bias, skip concatenated after the upsampled map, 1x1 head),
so the parameter counts match exactly (the benchmarks print both). Channels-first, as torch
users write it; ``channels_last=True`` converts model and inputs to torch's NHWC memory format.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

DICE_SMOOTH = 1e-5  # as jaxseg.train.losses


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, nd: int, dropout: float):
        super().__init__()
        Conv = nn.Conv2d if nd == 2 else nn.Conv3d
        Norm = nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d
        self.conv1, self.norm1 = Conv(cin, cout, 3, padding=1, bias=False), Norm(cout, eps=1e-5, momentum=0.1)
        self.conv2, self.norm2 = Conv(cout, cout, 3, padding=1, bias=False), Norm(cout, eps=1e-5, momentum=0.1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = self.dropout(F.relu(self.norm1(self.conv1(x))))
        return F.relu(self.norm2(self.conv2(x)))


class UNet(nn.Module):
    """``forward(x (B, C, *spatial)) -> (logits, activations)`` like the JAX model."""

    def __init__(self, in_channels: int, out_channels: int, features=(32, 64, 128, 256, 512),
                 dropout: float = 0.0, nd: int = 2):
        super().__init__()
        d = len(features) - 1
        self.depth, self.nd = d, nd
        Up = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        self.encoders = nn.ModuleList([
            ConvBlock(in_channels if i == 0 else features[i - 1], features[i], nd, dropout if i == d else 0.0)
            for i in range(d + 1)])
        self.upsamplers = nn.ModuleList([Up(features[i + 1], features[i], 2, stride=2) for i in range(d)])
        self.decoders = nn.ModuleList([ConvBlock(2 * features[i], features[i], nd, dropout) for i in range(d)])
        self.head = (nn.Conv2d if nd == 2 else nn.Conv3d)(features[0], out_channels, 1)

    def forward(self, x):
        pool = F.max_pool2d if self.nd == 2 else F.max_pool3d
        acts, skips = {}, []
        for i, block in enumerate(self.encoders):
            x = block(x)
            acts[f"enc{i}"] = x
            if i < self.depth:
                skips.append(x)
                x = pool(x, 2)
        for i in range(self.depth - 1, -1, -1):
            x = self.decoders[i](torch.cat([self.upsamplers[i](x), skips[i]], dim=1))
            acts[f"dec{i}"] = x
        return self.head(x), acts


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """jaxseg's ``bce_dice``: mean BCE + (1 - mean over channels of the batch-pooled soft Dice)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    axes = [0] + list(range(2, logits.ndim))
    inter = (p * target).sum(axes)
    den = p.sum(axes) + target.sum(axes)
    return bce + 1.0 - ((2 * inter + DICE_SMOOTH) / (den + DICE_SMOOTH)).mean()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
