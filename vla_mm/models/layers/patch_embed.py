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


class ConvStem(PatchEmbed):
    """Convolutional stem: stride-2 3x3 conv + BN + ReLU blocks down to the patch stride, then a 1x1 projection.

    Xiao et al., "Early Convolutions Help Transformers See Better" (NeurIPS 2021): replacing the patchify conv by
    a few small convolutions makes ViTs train faster and more stably, which matters most on small data. Same
    interface as :class:`PatchEmbed` (``patch_size`` must be a power of two). ``convs_per_stage > 1`` adds stride-1
    convs after each stride-2 one (a deeper stem: more local capacity before the token mixers).
    """

    def __init__(self, in_channels=3, embed_dim=768, patch_size=16, norm_layer=None, convs_per_stage=1):
        super().__init__()
        nn.Module.__init__(self)  # PatchEmbed's forward (padding, flatten, norm) over a different projection
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 2 ** n != patch_size:
            raise ValueError(f'ConvStem needs a power-of-two patch_size >= 2, got {patch_size}')
        self.patch_size = patch_size
        layers, c = [], in_channels
        for i in range(n):
            out = max(embed_dim // 2 ** (n - i), 16)
            for j in range(convs_per_stage):  # the first conv of a stage halves the resolution
                layers += [nn.Conv2d(c, out, 3, stride=2 if j == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.ReLU(True)]
                c = out
        layers.append(nn.Conv2d(c, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
