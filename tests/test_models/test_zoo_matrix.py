"""Issue 17's compatibility table on CPU: every mixer x {pure, hybrid} x scan route in the isotropic backbone
(forward, backward, output shape, finite values and gradients). The GPU side of the same table is
``tools/check_zoo_gpu.py``; ``docs/models.md`` shows both."""
import pytest
import torch

from vla_mm.registry import MIXERS, MODELS

ZOO = ('abc', 'bitnet', 'deltanet', 'gated_deltanet', 'gla', 'gsa', 'hgrn', 'hgrn2', 'lightnet', 'linear_attn',
       'retnet', 'rwkv6', 'transformer')
ROUTES = ('uni', 'flip', 'random', 'bi', 'cross', 'mh2d')
IMG = torch.randn(2, 3, 12, 20)  # a 3x5 token grid (patch 4): non-square
OPTS = dict(gsa=dict(num_slots=4), abc=dict(num_slots=4))  # fewer slots: the CPU reference is a loop over them


def test_the_zoo_is_registered():
    assert set(ZOO) <= set(MIXERS.module_dict)


@pytest.mark.parametrize('route', ROUTES)
@pytest.mark.parametrize('hybrid', (False, True), ids=('pure', 'hybrid'))
@pytest.mark.parametrize('mixer', ZOO)
def test_cell(mixer, hybrid, route):
    torch.manual_seed(0)
    cfg = dict(type='vla_mm.IsotropicBackbone', arch=dict(embed_dims=32, num_layers=2, num_heads=4, mlp_ratio=1.0),
               img_size=(12, 20), patch_size=4, mixer=dict(type=mixer, **OPTS.get(mixer, {})), out_type='featmap',
               scan=None if route == 'uni' else dict(type=route), attn_layers=[1] if hybrid else [])
    m = MODELS.build(cfg)
    x = IMG.clone().requires_grad_()
    (y,) = m(x)
    assert y.shape == (2, 32, 3, 5)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
    mixer_grads = [p.grad for n, p in m.layers[0].named_parameters() if 'mixer' in n and p.grad is not None]
    assert mixer_grads and any(g.abs().sum() > 0 for g in mixer_grads), 'the first block\'s mixer got no gradient'


@pytest.mark.parametrize('mixer', ZOO)
def test_bf16_autocast(mixer):
    """Under autocast the projections give bf16 while gate math may promote to fp32: every op call must still get
    one dtype (the GPU check found hgrn2 passing fp32 keys with bf16 values)."""
    torch.manual_seed(0)
    m = MODELS.build(dict(type='vla_mm.IsotropicBackbone', arch=dict(embed_dims=32, num_layers=1, num_heads=4,
                                                                      mlp_ratio=1.0),
                          img_size=(12, 20), patch_size=4, mixer=dict(type=mixer, **OPTS.get(mixer, {})),
                          out_type='featmap', scan=dict(type='bi')))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        (y,) = m(IMG)
    assert y.shape == (2, 32, 3, 5) and torch.isfinite(y).all()


@pytest.mark.parametrize('mixer', [m for m in ZOO if m not in ('linear_attn', 'transformer', 'bitnet')])
def test_gated_bi_merge(mixer):
    """A gated bi merge is as wide as the core's output (value_dim where a mixer expands its values: retnet 2C,
    gated_deltanet 1.5C), with no channels set by hand."""
    m = MODELS.build(dict(type='vla_mm.IsotropicBackbone', arch=dict(embed_dims=32, num_layers=1, num_heads=4,
                                                                      mlp_ratio=1.0),
                          img_size=(12, 20), patch_size=4, mixer=dict(type=mixer, **OPTS.get(mixer, {})),
                          scan=dict(type='bi', merge='gate')))
    (y,) = m(IMG)
    assert y.shape == (2, 32, 3, 5) and torch.isfinite(y).all()
