"""Shared checks every token mixer's CPU test runs (tiny sizes: the zoo has many mixers and CI is 2 cores).

A mixer test calls :func:`check_mixer` with the mixer's config; it asserts, on a non-square 3x5 token grid:
output shape, finite values, every trainable parameter reached by the gradient, float64 agreement of the
float32 model within tolerance (the CPU ops are the references), and, for directional mixers, that a route
changes the result while keeping shape and finiteness.
"""
import copy

import torch

import vla_mm  # noqa: F401
from vla_mm.models.mixers.base import MixerContext, build_mixer
from vla_mm.models.scans import build_scan

DIM, HEADS, GRID, BATCH = 32, 2, (3, 5), 2


def make(cfg, dim=DIM, num_heads=HEADS, layer_idx=0):
    torch.manual_seed(0)
    return build_mixer(cfg, dim=dim, num_heads=num_heads, layer_idx=layer_idx)


def run(mixer, x, route=None, hw=GRID):
    return mixer(x, MixerContext(hw=hw, route=route))


def check_mixer(cfg, dim=DIM, num_heads=HEADS, unused=(), routes=('bi', 'cross'), atol64=1e-4):
    """Build ``cfg`` and run the shared checks; returns the mixer. ``unused``: parameter names a design leaves
    without gradient on purpose (say why in the test)."""
    m = make(cfg, dim, num_heads)
    x = torch.randn(BATCH, GRID[0] * GRID[1], dim, requires_grad=True)
    y = run(m, x)
    assert y.shape == x.shape, (cfg, y.shape)
    assert torch.isfinite(y).all(), cfg
    (y.square().mean()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, cfg
    missing = [n for n, p in m.named_parameters()
               if p.requires_grad and n not in unused and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f'{cfg}: no finite gradient for {missing}'

    m64 = copy.deepcopy(m).double()
    y64 = run(m64, x.detach().double())
    err = ((y.detach().double() - y64).norm() / y64.norm().clamp_min(1e-30)).item()
    assert err < atol64, f'{cfg}: float32 vs float64 relative error {err:.2e}'

    if m.directional and routes:
        with torch.no_grad():
            base = run(m, x)
            for name in routes:
                route = build_scan(dict(type=name))
                yr = run(m, x, route=route)
                assert yr.shape == x.shape and torch.isfinite(yr).all(), (cfg, name)
                assert not torch.allclose(yr, base), f'{cfg}: route {name} left a directional mixer unchanged'
    return m


def rotate(x, pos, base=10000.0):
    """Rotary embedding written out per pair (i, i + d/2): angle pos * base^(-2i/d)."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        a = pos * base ** (-2 * i / d)
        c, s = torch.cos(a)[None, :, None], torch.sin(a)[None, :, None]
        out[..., i] = x[..., i] * c - x[..., i + d // 2] * s
        out[..., i + d // 2] = x[..., i + d // 2] * c + x[..., i] * s
    return out


def check_packed_equals_apart(cfg, route):
    """Two images packed into one sequence (``cu_seqlens``) give what they give apart, under ``route``."""
    m = make(cfg)
    x = torch.randn(2, 15, DIM)
    r = build_scan(route)
    with torch.no_grad():
        apart = m(x, MixerContext(hw=(3, 5), route=r))
        packed = m(x.reshape(1, 30, DIM), MixerContext(hw=(3, 5), route=r, cu_seqlens=torch.tensor([0, 15, 30])))
    torch.testing.assert_close(packed.view(2, 15, DIM), apart, rtol=1e-5, atol=1e-6)
