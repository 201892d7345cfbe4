import math

import torch
import torch.nn.functional as F


def resize_abs_pos_embed(pos_embed, src_hw, dst_hw, num_extra_tokens=0, mode='bicubic'):
    """Resize an absolute position embedding [1, extra + h*w, C] from grid ``src_hw`` to ``dst_hw``.

    Extra tokens (cls/distillation) are kept as they are; the grid part is interpolated (bicubic, as DeiT/ViTDet).
    """
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    if src_hw == dst_hw:
        return pos_embed
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    if grid.shape[1] != src_hw[0] * src_hw[1]:
        raise ValueError(f'position embedding has {grid.shape[1]} grid tokens, not {src_hw[0]}x{src_hw[1]}')
    C = grid.shape[-1]
    grid = grid.reshape(1, src_hw[0], src_hw[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_hw, mode=mode, align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], C)
    return torch.cat([extra, grid], dim=1)


def build_2d_sincos_pos_embed(hw, dim, temperature=10000.0):
    """Fixed 2D sine-cosine position embedding [1, h*w, dim] (MAE's decoder uses this)."""
    h, w = hw
    if dim % 4:
        raise ValueError(f'dim must be divisible by 4 for 2D sin-cos embeddings, got {dim}')
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing='ij')
    d = dim // 4
    omega = 1.0 / temperature ** (torch.arange(d, dtype=torch.float32) / d)
    out_x = gx.flatten()[:, None] * omega[None]
    out_y = gy.flatten()[:, None] * omega[None]
    emb = torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)
    return emb[None]


def grid_size(num_tokens):
    side = int(math.isqrt(num_tokens))
    if side * side != num_tokens:
        raise ValueError(f'{num_tokens} tokens do not form a square grid')
    return side, side
