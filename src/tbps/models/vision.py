"""Vision Transformer image encoder: patches -> tokens, returning the class token and every patch.

One class for both families: CLIP (ln_pre, conv without bias, QuickGELU) and BLIP/timm
(no ln_pre, conv with bias, GELU, LayerNorm eps 1e-6). Images need not be square: the position
grid is (H / patch, W / patch), e.g. 24 x 8 for 384 x 128 with patch 16.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Transformer


class VisionTransformer(nn.Module):
    def __init__(self, image_size: tuple[int, int], patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, act: str = "quick_gelu", ln_pre: bool = True, conv_bias: bool = False,
                 eps: float = 1e-5, grad_checkpointing: bool = False) -> None:
        super().__init__()
        h, w = image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch size {patch_size}")
        self.image_size = (h, w)
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.width = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=conv_bias)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.grid[0] * self.grid[1], width))
        self.ln_pre = nn.LayerNorm(width, eps=eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps=eps,
                                       grad_checkpointing=grad_checkpointing)
        self.ln_post = nn.LayerNorm(width, eps=eps)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + gh*gw, width]; token 0 is the class token; all tokens normalised."""
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"expected images of {self.image_size[0]}x{self.image_size[1]}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [B, P, width], row-major over the grid
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)


def interpolate_pos_embedding(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                              mode: str = "bicubic") -> torch.Tensor:
    """Resize a [1 + gh*gw, D] position table to another grid (e.g. 14x14 -> 24x8); `mode` bicubic
    (timm / BLIP) or bilinear (the official IRRA code), both without corner alignment."""
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"position-table interpolation (backbone.pos_interpolation) must be 'bicubic' or 'bilinear', "
                         f"got {mode!r}")
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    if grid.shape[0] != old_grid[0] * old_grid[1]:
        raise ValueError(f"position table has {grid.shape[0]} patches, grid {old_grid} needs {old_grid[0] * old_grid[1]}")
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def square_grid(num_patches: int) -> tuple[int, int]:
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patches do not form a square grid")
    return side, side
