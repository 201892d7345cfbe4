"""Scan routes (vla_mm.models.scans): route-then-merge identities, causal toy cores against explicitly
flipped / transposed copies, MAE's kept tokens, the random permutation through a checkpoint, head groups, the
gathers a route makes, and a real op (chunk_gla, CPU reference) under bi."""
import io

import pytest
import torch
import torch.nn as nn

from vla_mm.models.mixers.base import MixerContext
from vla_mm.models.scans import (BiScan, CrossScan, FlipScan, MultiHead2DScan, RandomScan, UniScan, build_scan,
                                 seeded_permutation)
from vla_mm.ops.gla import chunk_gla

H_, W_ = 3, 5  # a non-square grid


def ident(*xs, reverse):
    return xs[0]


def csum(x, *rest, reverse):
    """A causal toy core: cumulative sum along tokens, right to left when ``reverse``."""
    return x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)


def fwd(x):
    return x.cumsum(1)


def rev(x):
    return x.flip(1).cumsum(1).flip(1)


def to_col(x, h, w):
    """Row-major tokens [B, h*w, ...] -> column-major copy."""
    return x.unflatten(1, (h, w)).transpose(1, 2).flatten(1, 2)


def from_col(x, h, w):
    return x.unflatten(1, (w, h)).transpose(1, 2).flatten(1, 2)


def tokens(b=2, n=H_ * W_, heads=4, d=3, seed=0):
    return torch.randn(b, n, heads, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def kept_ids(b=2, n=H_ * W_, keep=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:keep] for _ in range(b)])  # unsorted, like MAE's


def gated_bi(channels):
    r = BiScan(merge='gate', channels=channels).double()
    with torch.no_grad():
        r.gate.copy_(torch.randn(channels))
    return r


ROUTES = {  # name: (builder taking H*V, passes per token under a sum)
    'uni': (lambda c: UniScan(), 1),
    'flip': (lambda c: FlipScan(), 1),
    'flip_alt': (lambda c: FlipScan(alternate=True), 1),
    'random': (lambda c: RandomScan(seed=5, hw=(H_, W_)), 1),
    'random_seed_only': (lambda c: RandomScan(seed=5), 1),
    'bi_sum': (lambda c: BiScan(), 2),
    'bi_mean': (lambda c: BiScan(merge='mean'), 1),
    'bi_gate': (gated_bi, 1),
    'cross_sum': (lambda c: CrossScan(), 4),
    'cross_mean': (lambda c: CrossScan(merge='mean'), 1),
    'mh2d': (lambda c: MultiHead2DScan(), 1),
    'mh2d_2dirs': (lambda c: MultiHead2DScan(directions=('col_rev', 'row')), 1),
}


@pytest.mark.parametrize('keep', [False, True])
@pytest.mark.parametrize('name', sorted(ROUTES))
def test_route_then_merge_is_identity(name, keep):
    """With the identity core every route returns its inputs, times the number of passes a sum adds."""
    make, count = ROUTES[name]
    ids = kept_ids() if keep else None
    x = tokens(n=ids.shape[1] if keep else H_ * W_)
    route = make(x.shape[2] * x.shape[3])
    for layer in (0, 1):
        out = route(ident, [x, None], MixerContext(hw=(H_, W_), ids_keep=ids, layer_idx=layer))
        torch.testing.assert_close(out, count * x, rtol=1e-12, atol=1e-12)


def test_bi_equals_flipped_copies():
    x = tokens()
    ctx = MixerContext(hw=(H_, W_))
    torch.testing.assert_close(BiScan()(csum, [x], ctx), fwd(x) + rev(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(BiScan(merge='mean')(csum, [x], ctx), (fwd(x) + rev(x)) / 2, rtol=0, atol=1e-12)
    route = gated_bi(4 * 3)
    s = torch.sigmoid(route.gate).view(4, 3)
    torch.testing.assert_close(route(csum, [x], ctx), s * fwd(x) + (1 - s) * rev(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize('hw', [(3, 5), (5, 3)])
def test_cross_equals_transposed_copies_and_gradients(hw):
    h, w = hw
    x = tokens(n=h * w).requires_grad_()
    ctx = MixerContext(hw=hw)
    out = CrossScan()(csum, [x], ctx)
    col = to_col(x, h, w)
    naive = fwd(x) + rev(x) + from_col(fwd(col), h, w) + from_col(rev(col), h, w)
    torch.testing.assert_close(out, naive, rtol=0, atol=1e-12)
    assert not torch.allclose(out, BiScan()(csum, [x], ctx))  # the column passes really differ
    probe = torch.randn_like(out)
    g_route, = torch.autograd.grad((out * probe).sum(), x)
    g_naive, = torch.autograd.grad((naive * probe).sum(), x)
    torch.testing.assert_close(g_route, g_naive, rtol=0, atol=1e-12)


def test_flip_and_alternate_follow_layer_index():
    x = tokens()
    ctx = MixerContext(hw=(H_, W_))
    torch.testing.assert_close(FlipScan()(csum, [x], ctx), rev(x), rtol=0, atol=0)
    alt = FlipScan(alternate=True)
    torch.testing.assert_close(alt(csum, [x], ctx.at_layer(2)), fwd(x), rtol=0, atol=0)
    torch.testing.assert_close(alt(csum, [x], ctx.at_layer(3)), rev(x), rtol=0, atol=0)


def grid_order(name, h, w, route):
    """Steps of an order, written out independently of the routes (random: the route's stored permutation)."""
    if name == 'row':
        return list(range(h * w))
    if name == 'col':
        return [r * w + c for c in range(w) for r in range(h)]
    return route.perm.tolist()


def naive_kept(x, ids, passes, h, w, route):
    """Per sample: each pass (order, reverse, heads) visits the kept tokens by their step in the full order."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for order, reverse, (a, c) in passes:
            step = {p: i for i, p in enumerate(grid_order(order, h, w, route))}
            seq = sorted(range(ids.shape[1]), key=lambda j: step[int(ids[b, j])])
            s = x[b:b + 1, seq, a:c]
            out[b, seq, a:c] += (rev(s) if reverse else fwd(s))[0]
    return out


@pytest.mark.parametrize('name', ['uni', 'flip', 'random', 'bi', 'cross', 'mh2d'])
def test_kept_tokens_follow_the_routes_order(name):
    """MAE: the route's order restricted to the kept tokens = kept tokens sorted by their rank in the full order."""
    ids = kept_ids(b=3, keep=8)
    x = tokens(b=3, n=8, heads=4)
    full = (0, 4)
    route, passes = {
        'uni': (UniScan(), [('row', False, full)]),
        'flip': (FlipScan(), [('row', True, full)]),
        'random': (RandomScan(seed=2, hw=(H_, W_)), [('random', False, full)]),
        'bi': (BiScan(), [('row', False, full), ('row', True, full)]),
        'cross': (CrossScan(), [('row', False, full), ('row', True, full), ('col', False, full),
                                ('col', True, full)]),
        'mh2d': (MultiHead2DScan(), [('row', False, (0, 1)), ('row', True, (1, 2)), ('col', False, (2, 3)),
                                     ('col', True, (3, 4))]),
    }[name]
    out = route(csum, [x], MixerContext(hw=(H_, W_), ids_keep=ids))
    torch.testing.assert_close(out, naive_kept(x, ids, passes, H_, W_, route), rtol=0, atol=1e-12)


def test_random_permutation_is_stored_and_survives_checkpoint():
    class Holder(nn.Module):
        def __init__(self, seed, hw):
            super().__init__()
            self.route = RandomScan(seed=seed, hw=hw)

    src = Holder(3, (H_, W_))
    perm = src.route.perm
    assert sorted(perm.tolist()) == list(range(H_ * W_)) and perm.tolist() != list(range(H_ * W_))
    assert set(src.state_dict()) == {'route.seed', 'route.grid', 'route.perm'}
    x, x_other = tokens(), tokens(n=4 * 2)
    ctx, ctx_other = MixerContext(hw=(H_, W_)), MixerContext(hw=(4, 2))
    ref = src.route(csum, [x], ctx)
    ref_other = src.route(csum, [x_other], ctx_other)
    # the order really is the stored permutation, inverted afterwards
    torch.testing.assert_close(ref, torch.empty_like(x).index_copy_(1, perm, fwd(x[:, perm])), rtol=0, atol=0)
    # another grid: drawn from the stored seed
    p_other = seeded_permutation(8, 3)
    torch.testing.assert_close(ref_other, torch.empty_like(x_other).index_copy_(1, p_other, fwd(x_other[:, p_other])),
                               rtol=0, atol=0)

    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    for hw in [(H_, W_), (6, 6)]:  # same training grid, and a model built for another grid
        dst = Holder(99, hw)
        assert not torch.equal(dst.route(csum, [x], ctx), ref)
        dst.load_state_dict(state)
        assert torch.equal(dst.route(csum, [x], ctx), ref)
        assert torch.equal(dst.route(csum, [x_other], ctx_other), ref_other)
        assert torch.equal(dst.route.perm, perm)


@pytest.mark.parametrize('heads,sizes', [(4, [1, 1, 1, 1]), (6, [2, 2, 1, 1])])
def test_multi_head_2d_equals_groups_by_hand(heads, sizes):
    """Each head group under its own direction, with a per-head parameter (one token: sliced, never gathered)."""
    x = tokens(heads=heads)
    scale = torch.randn(1, 1, heads, 3, dtype=torch.float64)

    def core(x, scale, reverse):
        return csum(x, reverse=reverse) * scale

    out = MultiHead2DScan()(core, [x, scale], MixerContext(hw=(H_, W_)))
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    parts = []
    for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        xg, sg = x[:, :, a:b], scale[:, :, a:b]
        col = to_col(xg, H_, W_)
        parts.append([fwd(xg), rev(xg), from_col(fwd(col), H_, W_), from_col(rev(col), H_, W_)][g] * sg)
    torch.testing.assert_close(out, torch.cat(parts, dim=2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='at least as many heads'):
        MultiHead2DScan()(core, [x[:, :, :3], scale[:, :, :3]], MixerContext(hw=(H_, W_)))


def storage(t):
    return t.untyped_storage().data_ptr()


def recording(seen):
    def core(x, *rest, reverse):
        seen.append((storage(x), reverse, x))
        return x
    return core


def test_row_major_makes_no_gather_and_each_map_gathers_once():
    x = tokens()
    ctx = MixerContext(hw=(H_, W_))
    seen = []
    BiScan()(recording(seen), [x], ctx)
    assert [(s[0], s[1]) for s in seen] == [(storage(x), False), (storage(x), True)]
    assert all(s[2] is x for s in seen)  # the inputs themselves, no copy

    seen.clear()
    CrossScan()(recording(seen), [x], ctx)
    ptrs = [s[0] for s in seen]
    assert ptrs[0] == ptrs[1] == storage(x)
    assert ptrs[2] == ptrs[3] != storage(x)  # one column-major gather serves both column passes
    assert seen[2][2] is seen[3][2]

    seen.clear()
    MultiHead2DScan()(recording(seen), [x], ctx)
    ptrs = [s[0] for s in seen]
    assert ptrs[0] == ptrs[1] == storage(x)  # row groups: head slices (views) of the inputs
    assert ptrs[2] == ptrs[3] != storage(x)  # column groups: one gather over their heads only
    assert seen[2][2]._base.shape[2] == 2


def test_gathers_counted(monkeypatch):
    """Cross over a full grid: one index_select in (the column-major map, per input) and one out (its summed
    outputs); bi: none."""
    calls = []
    real = torch.Tensor.index_select

    def counting(self, dim, index):
        calls.append(tuple(self.shape))
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, 'index_select', counting)
    x, y = tokens(), tokens(seed=3)
    ctx = MixerContext(hw=(H_, W_))
    BiScan()(lambda a, b, c, reverse: a + b, [x, y, None], ctx)
    assert calls == []
    CrossScan()(lambda a, b, c, reverse: a + b, [x, y, None], ctx)
    assert len(calls) == 3


def gla_inputs(n=H_ * W_, b=2, heads=2, k=8):
    g = torch.Generator().manual_seed(7)
    q, kk, v = (torch.randn(b, n, heads, k, generator=g) for _ in range(3))
    gk = torch.nn.functional.logsigmoid(torch.randn(b, n, heads, k, generator=g))
    return q, kk, v, gk


def test_chunk_gla_under_bi_equals_flipped_copies():
    q, k, v, g = gla_inputs()

    def core(q, k, v, g, reverse):
        return chunk_gla(q, k, v, g, reverse=reverse)[0]

    out = BiScan()(core, [q, k, v, g], MixerContext(hw=(H_, W_)))
    flip = lambda t: t.flip(1)  # noqa: E731
    naive = chunk_gla(q, k, v, g)[0] + flip(chunk_gla(flip(q), flip(k), flip(v), flip(g))[0])
    torch.testing.assert_close(out, naive, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, 2 * chunk_gla(q, k, v, g)[0], atol=1e-3)


def test_packed_sequences_run_row_major_routes_only():
    """bi over packed sequences reverses each sequence in the op; routes with an index map refuse them."""
    q, k, v, g = gla_inputs(n=H_ * W_ + 4 * 2, b=1)
    cu = torch.tensor([0, H_ * W_, H_ * W_ + 8])
    ctx = MixerContext(hw=(H_, W_), cu_seqlens=cu)

    def core(q, k, v, g, reverse):
        return chunk_gla(q, k, v, g, cu_seqlens=cu, reverse=reverse)[0]

    out = BiScan()(core, [q, k, v, g], ctx)
    parts = []
    for a, b in [(0, H_ * W_), (H_ * W_, H_ * W_ + 8)]:
        s = [t[:, a:b] for t in (q, k, v, g)]
        parts.append(chunk_gla(*s)[0] + chunk_gla(*s, reverse=True)[0])
    torch.testing.assert_close(out, torch.cat(parts, 1), rtol=1e-5, atol=1e-5)
    for route in (CrossScan(), RandomScan(), MultiHead2DScan(directions=('row', 'col'))):
        with pytest.raises(ValueError, match='packed sequences'):
            route(core, [q, k, v, g], ctx)


def test_build_scan():
    assert build_scan(None) is None and build_scan('uni') is None and build_scan(dict(type='uni')) is None
    assert isinstance(build_scan('mh2d'), MultiHead2DScan) and isinstance(build_scan('multi_head_2d'), MultiHead2DScan)
    assert build_scan(dict(type='bi', merge='mean')).merge == 'mean'
    assert build_scan(dict(type='bi', merge='gate'), channels=12).gate.shape == (12,)
    assert build_scan('flip', channels=12, hw=(3, 5)).alternate is False  # defaults only where taken
    assert build_scan('random', hw=(3, 5), channels=12).perm.numel() == 15
    route = CrossScan()
    assert build_scan(route) is route
    with pytest.raises(KeyError, match='scan route registry'):
        build_scan('zigzag')
    with pytest.raises(ValueError, match='merge'):
        build_scan(dict(type='bi', merge='max'))
    with pytest.raises(ValueError, match='channels'):
        build_scan(dict(type='bi', merge='gate'))
    with pytest.raises(ValueError, match='directions'):
        build_scan(dict(type='mh2d', directions=('row', 'diag')))


def test_bad_shapes_are_named():
    x = tokens()
    with pytest.raises(ValueError, match='N = 15 tokens'):
        CrossScan()(ident, [x], MixerContext(hw=(4, 4)))
    with pytest.raises(ValueError, match='ids_keep of 7'):
        BiScan()(ident, [x], MixerContext(hw=(H_, W_), ids_keep=kept_ids()))
    with pytest.raises(ValueError, match='per-channel merge weight'):
        gated_bi(5)(ident, [x], MixerContext(hw=(H_, W_)))


def test_a_route_without_passes_cannot_be_built():
    from vla_mm.models.scans.base import ScanRoute
    with pytest.raises(TypeError, match='passes'):
        ScanRoute()
