"""Absolute position embeddings: mmpretrain's bicubic resize and 2D sine-cosine table, with vla_mm's defaults
(no class token; grids given as ``(h, w)``)."""
from mmpretrain.models.utils import build_2d_sincos_position_embedding, resize_pos_embed

__all__ = ['resize_abs_pos_embed', 'build_2d_sincos_pos_embed']


def resize_abs_pos_embed(pos_embed, src_hw, dst_hw, num_extra_tokens=0, mode='bicubic'):
    """Resize ``[1, extra + h*w, C]`` from grid ``src_hw`` to ``dst_hw`` (extra tokens kept; the same tensor
    back when the grids agree)."""
    return resize_pos_embed(pos_embed, tuple(src_hw), tuple(dst_hw), mode=mode, num_extra_tokens=num_extra_tokens)


def build_2d_sincos_pos_embed(hw, dim, temperature=10000.0):
    """Fixed 2D sine-cosine embedding ``[1, h*w, dim]`` of a row-major ``(h, w)`` grid (MAE's).

    mmpretrain's table enumerates its grid argument column-major; given ``(w, h)`` it enumerates our row-major
    grid, so neighbours stay neighbours on non-square grids (its first half of channels then codes the row)."""
    h, w = hw
    return build_2d_sincos_position_embedding((w, h), dim, temperature=temperature)
