"""Every registered token mixer under ``torch.compile(fullgraph=True, backend='aot_eager')``: one graph (a graph
break, a host read such as ``.tolist()`` / ``.item()`` or a recompile is an error) whose forward and backward
equal eager (outputs, input gradient, every parameter's gradient), with dynamo tracing no ``ContextVar`` (as
before torch 2.13: an options read in a traced call is a graph break there). A directional mixer runs without a route and
under ``bi`` and ``cross`` in the same compiled call (one compilation per mixer keeps the file within its time
budget); HGRN also under ``multi_head_2d`` (cores given head sub-ranges), and packed sequences once.
Tiny: dim 32, 2 heads, a 3 x 5 grid; the ops run their CPU references inside their custom ops."""
import pytest
import torch

import vla_mm  # noqa: F401
from tests.dynamo_compat import contextvars_untraceable
from tests.test_models.mixer_checks import BATCH, DIM, GRID, HEADS
from vla_mm.models.mixers.base import MixerContext, build_mixer
from vla_mm.models.scans import build_scan
from vla_mm.registry import MIXERS

#: options that keep a mixer small (slots) or reach more of its code (the per-head lower bound)
EXTRA = dict(gsa=dict(num_slots=8), abc=dict(num_slots=8), hgrn=dict(num_layers=4), hgrn2=dict(num_layers=4))
#: routes besides none, per directional mixer (multi_head_2d: one head per group at 2 heads)
ROUTES = dict(hgrn=('bi', 'cross', dict(type='multi_head_2d', directions=('row_rev', 'col'))))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True), contextvars_untraceable():
        yield
    torch._dynamo.reset()


def outputs_and_grads(fn, m, x):
    """``fn(x)`` (a list of outputs), then the gradients of one loss over them w.r.t. x and every parameter."""
    ys = fn(x)
    params = [p for p in m.parameters() if p.requires_grad]
    return ys, torch.autograd.grad(sum(y.square().sum() for y in ys), [x] + params, allow_unused=True)


def check_compiled(m, ctxs, x, labels):
    def fn(t):
        return [m(t, ctx) for ctx in ctxs]
    compiled = torch.compile(fn, fullgraph=True, backend='aot_eager')
    # compiled first, as a fresh model is: routes trace with empty index-map caches
    (ys_c, gs_c), (ys, gs) = outputs_and_grads(compiled, m, x), outputs_and_grads(fn, m, x)
    for label, a, b in zip(labels, ys_c, ys):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda s, n=label: f'output under {n}: {s}')
    for name, a, b in zip(['x'] + [n for n, p in m.named_parameters() if p.requires_grad], gs_c, gs):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda s, n=name: f'gradient of {n}: {s}')
    # another input of the same shape runs the same graph, after eager calls too (a recompile is an error)
    x2 = torch.randn_like(x).requires_grad_()
    for a, b in zip(compiled(x2), fn(x2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(MIXERS.module_dict))
def test_mixer_compiles_whole(name):
    torch.manual_seed(0)
    m = build_mixer(dict(type=name, **EXTRA.get(name, {})), dim=DIM, num_heads=HEADS, layer_idx=1)
    routes = (None,) + (ROUTES.get(name, ('bi', 'cross')) if m.directional else ())
    ctxs = [MixerContext(hw=GRID, route=build_scan(r)) for r in routes]
    x = torch.randn(BATCH, GRID[0] * GRID[1], DIM, requires_grad=True)
    check_compiled(m, ctxs, x, [r if r is None or isinstance(r, str) else r['type'] for r in routes])


def test_packed_sequences_compile_whole():
    """Packed sequences read no lengths on the host: LightNet's running normaliser and the short convolutions
    stop at the boundaries through index arithmetic on the device."""
    torch.manual_seed(0)
    m = build_mixer(dict(type='lightnet', use_short_conv=True), dim=DIM, num_heads=HEADS)
    x = torch.randn(1, 2 * GRID[0] * GRID[1], DIM, requires_grad=True)
    cu = torch.tensor([0, 4, GRID[0] * GRID[1], 2 * GRID[0] * GRID[1]])
    check_compiled(m, [MixerContext(hw=GRID, cu_seqlens=cu)], x, ['packed'])
