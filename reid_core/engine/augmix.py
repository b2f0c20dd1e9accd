"""AugMix (Hendrycks et al. 2020) for whole batches on the training device.

kornia 0.9 has no AugMix, so this builds it from kornia's functional ops. Each selected image gets
`AUGMIX_WIDTH` chains of 1..`AUGMIX_MAX_DEPTH` random ops; the chains are mixed with Dirichlet(α)
weights and the result is mixed with the original with a Beta(α, α) weight. All chains of all
images form one stacked batch, and each chain step runs every op once on the rows that drew it,
so the cost does not grow with a Python loop per image. Only the augmented image is returned (no
Jensen-Shannon consistency loss), as in FastReID.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from kornia.enhance import equalize, posterize, solarize
from kornia.geometry.transform import rotate, shear, translate

AUGMIX_WIDTH = 3  # chains per image (k)
AUGMIX_MAX_DEPTH = 3  # each chain draws its depth uniformly from 1..AUGMIX_MAX_DEPTH
AUGMIX_ALPHA = 1.0  # Dirichlet concentration over chains and Beta(α, α) for the final mix
AUGMIX_SEVERITY = 3  # the paper's default; an op's level is drawn from U(0.1, severity) / 10

# op(images in [0, 1], level in (0, 1] per row, sign ±1 per row) -> images in [0, 1]
AugMixOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _autocontrast(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    # Per-channel min-max stretch as in PIL; kornia's normalize_min_max blacks out flat channels.
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)


def _equalize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return equalize(x)


def _posterize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return posterize(x, 4 - (4 * level).floor().long())  # 4 bits, fewer at high levels


def _solarize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return solarize(x, 1.0 - level)


def _rotate(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return rotate(x, 30.0 * level * sign)  # degrees


def _shear_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return shear(x, torch.stack([0.3 * level * sign, torch.zeros_like(level)], dim=1))


def _shear_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return shear(x, torch.stack([torch.zeros_like(level), 0.3 * level * sign], dim=1))


def _translate_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    dx = level * sign * (x.shape[-1] / 3.0)  # pixels, up to a tenth of the width at severity 3
    return translate(x, torch.stack([dx, torch.zeros_like(dx)], dim=1))


def _translate_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    dy = level * sign * (x.shape[-2] / 3.0)
    return translate(x, torch.stack([torch.zeros_like(dy), dy], dim=1))


# The paper's op set: no contrast/colour/brightness/sharpness, which overlap ImageNet-C.
AUGMIX_OPS: dict[str, AugMixOp] = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": _solarize,
    "rotate": _rotate,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


def augmix_chains(
    images: torch.Tensor,
    width: int = AUGMIX_WIDTH,
    max_depth: int = AUGMIX_MAX_DEPTH,
    severity: float = AUGMIX_SEVERITY,
) -> torch.Tensor:
    """Augmented copies of M×C×H×W `images` in [0, 1]: width×M×C×H×W, chain by chain.

    Every row draws its own depth, and per step its own op, level and sign; all draws are made up
    front on the images' device, so the random stream does not depend on the pixel values.
    """
    m = images.shape[0]
    device = images.device
    chains = images.repeat(width, 1, 1, 1)  # row c * m + i: chain c of image i
    rows = chains.shape[0]
    ops = list(AUGMIX_OPS.values())
    depth = torch.randint(1, max_depth + 1, (rows,), device=device)
    op_index = torch.randint(len(ops), (max_depth, rows), device=device)
    level = (0.1 + (severity - 0.1) * torch.rand(max_depth, rows, device=device)) / 10.0
    sign = torch.where(torch.rand(max_depth, rows, device=device) < 0.5, -1.0, 1.0)
    for step in range(max_depth):
        active = depth > step
        for k, op in enumerate(ops):
            idx = ((op_index[step] == k) & active).nonzero().squeeze(1)
            if idx.numel():
                out = op(chains.index_select(0, idx), level[step, idx], sign[step, idx])
                chains.index_copy_(0, idx, out.clamp(0.0, 1.0))
    return chains.view(width, m, *images.shape[1:])


def augmix_mix(
    images: torch.Tensor,
    chains: torch.Tensor,
    chain_weights: torch.Tensor,
    mix_weight: torch.Tensor,
) -> torch.Tensor:
    """(1 − m)·image + m·Σ_k w_k·chain_k for M images, K×M chains, M×K weights w and M weights m.

    Separate from the sampling so the mixing can be checked with chosen weights: m = 0 returns
    `images` exactly, and convex weights keep every pixel between its inputs' extremes.
    """
    mixed = (chain_weights.t()[:, :, None, None, None] * chains).sum(dim=0)
    m = mix_weight.view(-1, 1, 1, 1).to(images.dtype)
    return (1 - m) * images + m * mixed


def augmix(
    images: torch.Tensor,
    width: int = AUGMIX_WIDTH,
    max_depth: int = AUGMIX_MAX_DEPTH,
    severity: float = AUGMIX_SEVERITY,
    alpha: float = AUGMIX_ALPHA,
) -> torch.Tensor:
    """AugMix every image of an M×C×H×W batch in [0, 1]; the result stays in [0, 1]."""
    m, device = images.shape[0], images.device
    concentration = torch.full((width,), alpha, device=device)
    chain_weights = torch.distributions.Dirichlet(concentration).sample((m,))
    a = torch.tensor(alpha, device=device)
    mix_weight = torch.distributions.Beta(a, a).sample((m,))
    chains = augmix_chains(images, width, max_depth, severity)
    return augmix_mix(images, chains, chain_weights, mix_weight)
