"""Tokens ``[B, h*w, C]`` <-> maps ``[B, C, h, w]`` (einops; views where the layout allows)."""
from einops import rearrange

__all__ = ['tokens_to_map', 'map_view']


def tokens_to_map(x, hw):
    """Tokens ``[B, h*w, C]`` -> an NCHW-contiguous map ``[B, C, h, w]`` (one copy: for returned outputs)."""
    return rearrange(x, 'b (h w) c -> b c h w', h=hw[0]).contiguous()


def map_view(x, hw):
    """Contiguous tokens ``[B, h*w, C]`` -> a channels-last ``[B, C, h, w]`` view (no copy): a conv takes it as
    it is and returns channels-last, whose tokens view ``flatten(2).transpose(1, 2)`` is contiguous again."""
    return rearrange(x, 'b (h w) c -> b c h w', h=hw[0])
