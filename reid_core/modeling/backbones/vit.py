"""A plain Vision Transformer (Dosovitskiy et al. 2021) as a re-id backbone, as in TransReID.

16×16 patch embedding (a conv; `patch_stride` < 16 gives TransReID's overlapping patches), a
class token, learned position embeddings, pre-norm blocks (fused-qkv multi-head attention, GELU
MLP of ratio 4, optional stochastic depth) and a final LayerNorm.

Output: the patch tokens after the final norm, as an N×C×h×w map over the patch grid (16×8 at
256×128), so the model's pooling layer reads out the embedding. Average pooling is the right
readout (global average pooling of tokens is a standard ViT readout); GeM is not, since
LayerNorm outputs are signed and GeM clamps them to a small positive floor first. The class
token still takes part in attention, so pretrained weights load unchanged, but is not output.

The network is built for `img_size` (256×128 by default; BackboneOptions carries no size).
Other inputs work when H and W are multiples of the patch size: the position embedding is then
resized to the new grid (bicubic) at forward time, with sizes taken from the input's shape, so
ONNX export still works (its Resize is static for a static input size).

Key names follow timm's VisionTransformer (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`; no `head`), and the
registered `remap` resizes a checkpoint's `pos_embed` grid (14×14 for a 224 ImageNet model) to
this model's grid, keeping the class token's embedding. Sizes: `vit_small` = DeiT-S (384 wide,
12 deep, 6 heads; 21,665,664 parameters at 224, 21,639,552 at 256×128), `vit_tiny` = DeiT-Ti
(192, 12, 3; 5,524,416 at 224).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reid_core.modeling.backbones.registry import (
    BackboneOptions,
    StateDict,
    register_backbone,
    reject_options,
)

DEFAULT_IMG_SIZE = (256, 128)
LN_EPS = 1e-6  # timm / DeiT LayerNorm epsilon: pretrained weights expect it


def resize_grid(
    pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], antialias: bool = False
) -> torch.Tensor:
    """Bicubic resize of grid position embeddings (1×old_h·old_w×C → 1×new_h·new_w×C)."""
    channels = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], channels)


class PatchEmbed(nn.Module):
    """Image → patch tokens via a patch_size×patch_size conv with the given stride."""

    def __init__(self, patch_size: int, stride: int, embed_dim: int):
        super().__init__()
        self.patch_size, self.stride = patch_size, stride
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p, s = self.patch_size, self.stride
        if height < p or width < p:
            raise ValueError(f"input {height}×{width} is smaller than the {p}×{p} patch")
        if s == p and (height % p or width % p):
            raise ValueError(f"input {height}×{width}: H and W must be multiples of {p}")
        return (height - p) // s + 1, (width - p) // s + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each N×heads×tokens×head_dim
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole samples at rate `p`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT feature-map extractor: patch tokens after the final norm as N×C×h×w."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        img_size: tuple[int, int] = DEFAULT_IMG_SIZE,
        patch_size: int = 16,
        patch_stride: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, patch_stride or patch_size, embed_dim)
        self.img_size = tuple(img_size)
        self.grid_size = self.patch_embed.grid(*self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # deeper blocks drop more
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.out_channels = embed_dim
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Class + patch position embeddings for `grid`, resized if it is not the built one."""
        if grid == self.grid_size:
            return self.pos_embed
        patches = resize_grid(self.pos_embed[:, 1:], self.grid_size, grid)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed.grid(x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.position_embedding(grid)
        tokens = self.norm(self.blocks(tokens))
        patches = tokens[:, 1:].transpose(1, 2)
        return patches.reshape(patches.shape[0], patches.shape[1], grid[0], grid[1])


def remap_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """timm / DeiT ViT checkpoint → `model`: resize `pos_embed` to the model's patch grid.

    The class token's embedding is kept as is; the square grid of the checkpoint (e.g. 14×14)
    is resized bicubically (antialiased when shrinking) to `model.grid_size` (e.g. 16×8).
    Other keys pass through (the pretrained loader drops the classifier `head.*`).
    """
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if pos is None:
        return out
    grid = model.grid_size
    patches = pos.shape[1] - 1
    if patches == grid[0] * grid[1] and pos.shape == model.pos_embed.shape:
        return out
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(
            f"pos_embed with {patches} patch tokens is not a square grid; cannot resize it"
        )
    resized = resize_grid(pos[:, 1:].float(), (side, side), grid, antialias=True)
    out["pos_embed"] = torch.cat([pos[:, :1].float(), resized], dim=1).to(pos.dtype)
    return out


VIT_SIZES = {
    "vit_small": (384, 12, 6),  # DeiT-S
    "vit_tiny": (192, 12, 3),  # DeiT-Ti
}
DROP_PATH_RATE = 0.1  # DeiT and TransReID training setting


def _build(name: str):
    dim, depth, heads = VIT_SIZES[name]

    def build(options: BackboneOptions) -> nn.Module:
        reject_options(name, options, set())
        return VisionTransformer(dim, depth, heads, drop_path_rate=DROP_PATH_RATE)

    return build


for _name in VIT_SIZES:
    register_backbone(_name, remap=remap_timm)(_build(_name))
