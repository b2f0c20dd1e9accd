"""Layers shared by the CNN backbones: IBN, squeeze-excitation and non-local blocks.

Attribute names follow the public checkpoints (IBN-Net's `IN`/`BN`, FastReID's `se.fc.0` and
non-local `g`/`theta`/`phi`/`W`) so their weights load without renaming.

Modules whose class sets `pretrained_optional = True` are add-ons that a plain ImageNet
checkpoint legitimately lacks; `load_pretrained` leaves them at their initialisation and
reports them as missing instead of failing.
"""

from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """Instance norm on the first half of the channels, batch norm on the rest (IBN-a).

    Instance norm removes per-image contrast and colour statistics (appearance, camera),
    batch norm keeps the content information the other half needs (Pan et al. 2018).
    """

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled features (Hu et al. 2018).

    Bias-free linear layers as in FastReID's `SELayer`, so its `se.fc.0`/`se.fc.2` keys load.
    """

    pretrained_optional = True

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class NonLocal(nn.Module):
    """Non-local block (Wang et al. 2018): every position attends to every other position.

    `mode="dot"` normalises the pairwise dot products by the number of positions (FastReID's
    AGW choice, linear in the affinities); `mode="gaussian"` uses the embedded-Gaussian softmax.
    The output BN starts at zero, so a freshly inserted block is an identity map and does not
    disturb pretrained weights. `inter_channels` defaults to half the input, as in the paper.
    """

    pretrained_optional = True

    def __init__(self, channels: int, inter_channels: int | None = None, mode: str = "dot"):
        super().__init__()
        if mode not in ("dot", "gaussian"):
            raise ValueError(f"non-local mode must be 'dot' or 'gaussian', got {mode!r}")
        inter = inter_channels or max(1, channels // 2)
        self.mode = mode
        self.g = nn.Conv2d(channels, inter, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init and a zero output BN: the block is an identity map.

        Backbones call this after their blanket Kaiming (fan-out) conv init: the affinity path
        grows with the cube of its input, so it keeps the smaller default init (as FastReID).
        """
        for conv in (self.g, self.theta, self.phi, self.W[0]):
            conv.reset_parameters()
        self.W[1].reset_parameters()
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x).flatten(2).transpose(1, 2)  # N × HW × C'
        phi = self.phi(x).flatten(2)  # N × C' × HW
        g = self.g(x).flatten(2).transpose(1, 2)  # N × HW × C'
        affinity = torch.matmul(theta, phi)  # N × HW × HW
        if self.mode == "gaussian":
            affinity = affinity.softmax(dim=-1)
        else:
            affinity = affinity / affinity.shape[-1]
        y = torch.matmul(affinity, g).transpose(1, 2)  # N × C' × HW
        y = y.reshape(y.shape[0], y.shape[1], x.shape[2], x.shape[3])
        return x + self.W(y)


def init_residual_network(network: nn.Module, zero_last_norms: list[nn.Module]) -> None:
    """Kaiming-normal convolutions (fan-out), norms at unit scale and zero shift, except
    `zero_last_norms` (residual branches' last norms) at zero scale, so that those blocks
    start as identities (Goyal et al. 2017): from scratch on a short budget this trains much
    better. FastReID starts every norm at unit scale: pass no norms for its initialisation.
    Non-local blocks keep their own identity start."""
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for norm in zero_last_norms:
        nn.init.zeros_(norm.weight)
    for m in network.modules():
        if isinstance(m, NonLocal):
            m.reset_parameters()
