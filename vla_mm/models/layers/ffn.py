"""The feed-forward half of a block: mmcv's ``FFN`` (Linear -> act -> Linear, the transformer MLP) or
mmpretrain's ``SwiGLUFFN`` (``w3(silu(x W1) * x W2)``, Shazeer 2020), both with the residual, layer scale and
drop path inside (``forward(x, identity)`` returns ``identity + drop_path(gamma * ffn(x))``)."""
from mmcv.cnn.bricks.transformer import FFN
from mmpretrain.models.utils import SwiGLUFFN

__all__ = ['build_ffn', 'FFN_TYPES']

FFN_TYPES = ('mlp', 'glu')


def build_ffn(ffn_type, dim, hidden_dim, act_cfg=dict(type='GELU'), drop_rate=0.0, drop_path_rate=0.0,
              layer_scale_init_value=0.0):
    """``ffn_type`` 'mlp' (``act_cfg``, dropout ``drop_rate`` after the activation and the output) or 'glu'
    (SiLU gate; no dropout). Parameters: ``ffn.layers.0.0`` / ``ffn.layers.1`` (mlp), ``ffn.w12`` / ``ffn.w3``
    (glu), ``ffn.gamma2.weight`` with layer scale."""
    drop_path = dict(type='DropPath', drop_prob=drop_path_rate) if drop_path_rate > 0 else None
    if ffn_type == 'mlp':
        return FFN(embed_dims=dim, feedforward_channels=hidden_dim, num_fcs=2, act_cfg=act_cfg, ffn_drop=drop_rate,
                   dropout_layer=drop_path, add_identity=True, layer_scale_init_value=layer_scale_init_value or 0.0)
    if ffn_type == 'glu':
        return SwiGLUFFN(embed_dims=dim, feedforward_channels=hidden_dim, dropout_layer=drop_path,
                         add_identity=True, layer_scale_init_value=layer_scale_init_value or 0.0)
    raise ValueError(f'ffn_type must be one of {FFN_TYPES}, got {ffn_type!r}')
