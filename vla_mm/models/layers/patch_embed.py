import torch.nn as nn


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: [B, C, H, W] -> tokens [B, N, D] and the token grid (h, w).

    Inputs whose sides are not multiples of the patch size are padded at the bottom/right (dense tasks take
    arbitrary sizes such as 1333x800).
    """

    def __init__(self, in_channels=3, embed_dim=768, patch_size=16, norm_layer=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        H, W = x.shape[-2:]
        p = self.patch_size
        pad_h, pad_w = (-H) % p, (-W) % p
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw
