"""Non-causal (bidirectional) linear attention: one op, its variants as keyword options.

    o = linear_attn(q, k, v, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6, focus_power=3.0,
                    rope=None, norm='standard', key_padding_mask=None, cu_seqlens=None)

q, k: [B, N, H, K]; v: [B, N, H, V] (K, V <= 256) -> o: [B, N, H, V] in v's dtype. See ``reference.py`` for the
exact definition of every option. The op is the custom op ``vla_mm::linear_attn`` (``torch.compile`` traces
through it): CUDA tensors run the Triton kernels (``kernel.py``), CPU tensors, float64 inputs or
``VLA_OPS_REFERENCE=1`` the plain PyTorch reference. ``linear_attn_triton`` forces the kernels (tests run it on
CPU tensors under ``TRITON_INTERPRET=1``); ``linear_attn_reference`` is the reference itself.

Of the keyword contract shared by the op families (``scale``, ``initial_state``, ``output_final_state``,
``cu_seqlens``, ``reverse``) this op takes ``scale`` and ``cu_seqlens`` only: every token attends to its whole
sequence, so there is no direction to reverse and no running state to start from or return.

q, k, v may be strided views (e.g. ``qkv(x).reshape(B, N, 3, H, D).unbind(2)`` or a transposed ``[B, H, N, D]``
tensor): the kernels read them through their strides, without a copy. ``linear_attn_qkv(qkv)`` takes the packed
``[B, N, 3, H, D]`` projection itself (the custom op ``vla_mm::linear_attn_qkv``): its backward writes dq, dk, dv
into one packed gradient, where the views' gradients would be stacked by autograd (a copy of the three).

Reproducibility: the kernels sum the states over blocks of N with fp32 atomics, whose order varies between GPU
runs (differences of ~1e-7 that training amplifies). Under ``torch.use_deterministic_algorithms(True)`` each
sequence's states are summed by one program instead: the same bits every run, with less parallelism over N.
"""
import torch

from ..common import check_cu_seqlens, check_dtype, check_same_device, kernel_options, register_op, use_triton
from .reference import linear_attn_reference as _reference_impl

__all__ = ['linear_attn', 'linear_attn_qkv', 'linear_attn_reference', 'linear_attn_triton', 'FEATURE_MAPS',
           'MAX_HEAD_DIM']

FEATURE_MAPS = ('identity', 'elu1', 'relu', 'focused')
NORMS = ('standard', 'linfusion')
MAX_HEAD_DIM = 256


def _check_args(q, k, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask,
                cu_seqlens):
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dim() != 4:
            raise ValueError(f'{name} must have shape [B, N, H, D], got {tuple(t.shape)}')
        check_dtype(name, t, allow_float64=True)   # float64 takes the reference
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f'q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
    if q.shape != k.shape:
        raise ValueError(f'k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f'v must have shape [B, N, H, V] = {tuple(q.shape[:3])} + [V], got {tuple(v.shape)}')
    B, N, H, K = q.shape
    V = v.shape[-1]
    if not 1 <= K <= MAX_HEAD_DIM:
        raise ValueError(f'q/k head dim K must be in [1, {MAX_HEAD_DIM}], got {K}')
    if not 1 <= V <= MAX_HEAD_DIM:
        raise ValueError(f'v head dim V must be in [1, {MAX_HEAD_DIM}], got {V}')
    if N < 1 or B < 1 or H < 1:
        raise ValueError(f'q must have B, N, H >= 1, got {tuple(q.shape)}')
    check_same_device(q=q, k=k, v=v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f'feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}')
    if norm not in NORMS:
        raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
    if not isinstance(normalize, bool):
        raise ValueError(f'normalize must be a bool, got {normalize!r}')
    if norm != 'standard' and not normalize:
        raise ValueError(f"norm={norm!r} only applies to normalize=True")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f'scale must be a python number or None, got {type(scale).__name__}')
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f'eps must be a non-negative number, got {eps!r}')
    if not isinstance(focus_power, (int, float)) or not 0 < focus_power <= 16:
        raise ValueError(f'focus_power must be a number in (0, 16], got {focus_power!r}')
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool \
                or tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(f'key_padding_mask must be a bool tensor of shape [B, N] = {(B, N)}, got '
                             f'{getattr(key_padding_mask, "dtype", None)} {tuple(getattr(key_padding_mask, "shape", ()))}')
    if cu_seqlens is not None and key_padding_mask is not None:
        raise ValueError('pass either key_padding_mask or cu_seqlens, not both')
    check_cu_seqlens(cu_seqlens, B, N)
    if rope is not None:
        if not isinstance(rope, (tuple, list)) or len(rope) != 2:
            raise ValueError('rope must be a (cos, sin) pair of tensors')
        if K % 2:
            raise ValueError(f'rope needs an even head dim K, got {K}')
        for name, t in zip(('rope cos', 'rope sin'), rope):
            ok = isinstance(t, torch.Tensor) and t.shape[-1] == K // 2 and (
                (t.dim() == 2 and t.shape[0] == N) or (t.dim() == 3 and tuple(t.shape[:2]) == (N, H)) or
                (t.dim() == 4 and tuple(t.shape[:3]) == (B, N, H)))
            if not ok:
                raise ValueError(f'{name} must have shape [N, K/2], [N, H, K/2] or [B, N, H, K/2] with '
                                 f'(B, N, H, K/2) = {(B, N, H, K // 2)}, got {tuple(getattr(t, "shape", ()))}')
            if t.device != q.device:
                raise ValueError(f'{name} must be on {q.device}, got {t.device}')


def _reference(q, k, v, feature_map, normalize, scale, eps, focus_power, rope_cos, rope_sin, norm,
               key_padding_mask, cu_seqlens):
    rope = None if rope_cos is None else (rope_cos, rope_sin)
    return (_reference_impl(q, k, v, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
                            focus_power=focus_power, rope=rope, norm=norm, key_padding_mask=key_padding_mask,
                            cu_seqlens=cu_seqlens),)


def _plan(q, v, feature_map, normalize, scale, eps, focus_power, rope_cos, rope_sin, norm, key_padding_mask,
          cu_seqlens):
    from . import kernel
    rope = None if rope_cos is None else (rope_cos, rope_sin)
    return kernel.plan(q, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask,
                       cu_seqlens)


def _state_numel(q, v, cu_seqlens):
    """Elements of the fp32 state the forward keeps for the backward (None: it keeps none, the backward
    recomputes it)."""
    from . import kernel
    B, N, H, K = q.shape
    nseq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    keep = kernel.saves_state(nseq, B * N, H, K, v.shape[-1], q.element_size())
    return kernel.state_size(nseq, H, K, v.shape[-1]) if keep else None


def _triton(q, k, v, *opts):
    from . import kernel
    o, state = kernel.forward(q, k, v, _plan(q, v, *opts))
    return (o,), ((state,) if _state_numel(q, v, opts[-1]) is not None else ())


def _triton_backward(grads, outputs, residuals, q, k, v, *opts):
    from . import kernel
    do = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    return kernel.backward(q, k, v, do, residuals[0] if residuals else None, _plan(q, v, *opts))


def _fake(q, k, v, feature_map, normalize, scale, eps, focus_power, rope_cos, rope_sin, norm, key_padding_mask,
          cu_seqlens):
    o = v.new_empty(v.shape)
    numel = _state_numel(q, v, cu_seqlens) if use_triton(q, k, v) else None
    return (o,) if numel is None else (o, q.new_empty(numel, dtype=torch.float32))


_linear_attn_op = register_op(
    'linear_attn', '(Tensor q, Tensor k, Tensor v, str feature_map, bool normalize, float? scale, float eps, '
                   'float focus_power, Tensor? rope_cos, Tensor? rope_sin, str norm, Tensor? key_padding_mask, '
                   'Tensor? cu_seqlens)',
    outputs=1, grads=('q', 'k', 'v'), reference=_reference, triton=_triton, triton_backward=_triton_backward,
    fake=_fake, saves_outputs=())


def _unpacked(fn):
    """``fn`` of the linear_attn op's arguments as a function of the packed op's (qkv first)."""
    def run(qkv, *opts):
        return fn(*qkv.unbind(2), *opts)
    return run


def _qkv_triton_backward(grads, outputs, residuals, qkv, *opts):
    from . import kernel
    q, k, v = qkv.unbind(2)
    do = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    kernel.backward(q, k, v, do, residuals[0] if residuals else None, _plan(q, v, *opts), out=dqkv.unbind(2))
    return (dqkv,)


_linear_attn_qkv_op = register_op(
    'linear_attn_qkv', '(Tensor qkv, str feature_map, bool normalize, float? scale, float eps, float focus_power, '
                       'Tensor? rope_cos, Tensor? rope_sin, str norm, Tensor? key_padding_mask, Tensor? cu_seqlens)',
    outputs=1, grads=('qkv',), reference=_unpacked(_reference), triton=_unpacked(_triton),
    triton_backward=_qkv_triton_backward, fake=_unpacked(_fake), saves_outputs=())


def _op_args(q, k, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens):
    cos, sin = rope if rope is not None else (None, None)
    return (q, k, v, feature_map, normalize, None if scale is None else float(scale), float(eps),
            float(focus_power), cos, sin, norm, key_padding_mask, cu_seqlens)


def linear_attn(q, k, v, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6, focus_power=3.0,
                rope=None, norm='standard', key_padding_mask=None, cu_seqlens=None):
    """Non-causal linear attention (see module doc): the custom op ``vla_mm::linear_attn``; Triton on CUDA,
    the reference on CPU (and for float64 inputs or ``VLA_OPS_REFERENCE=1``)."""
    args = (q, k, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens)
    _check_args(*args)
    return _linear_attn_op(*_op_args(*args))[0]


def linear_attn_qkv(qkv, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6, focus_power=3.0, rope=None,
                    norm='standard', key_padding_mask=None, cu_seqlens=None, backend=None):
    """:func:`linear_attn` of ``q, k, v = qkv.unbind(2)`` for a packed ``qkv`` ``[B, N, 3, H, D]`` (a qkv
    projection reshaped; any strides), with one packed gradient. ``backend``: None (the usual dispatch) or
    'triton' (the kernels whatever the device, as :func:`linear_attn_triton`)."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f'qkv must be a [B, N, 3, H, D] tensor, got '
                         f'{tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__}')
    args = (*qkv.unbind(2), feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens)
    _check_args(*args)
    op_args = (qkv, *_op_args(*args)[3:])
    if backend is None:
        return _linear_attn_qkv_op(*op_args)[0]
    with kernel_options(backend=backend):
        return _linear_attn_qkv_op(*op_args)[0]


def linear_attn_triton(q, k, v, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6, focus_power=3.0,
                       rope=None, norm='standard', key_padding_mask=None, cu_seqlens=None):
    """The Triton kernels, whatever the device (CPU tensors need ``TRITON_INTERPRET=1``)."""
    args = (q, k, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens)
    _check_args(*args)
    with kernel_options(backend='triton'):
        return _linear_attn_op(*_op_args(*args))[0]


def linear_attn_reference(q, k, v, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6,
                          focus_power=3.0, rope=None, norm='standard', key_padding_mask=None, cu_seqlens=None):
    """The plain PyTorch reference (``reference.py``), with the same argument checks (no custom op)."""
    _check_args(q, k, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask,
                cu_seqlens)
    return _reference_impl(q, k, v, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
                           focus_power=focus_power, rope=rope, norm=norm, key_padding_mask=key_padding_mask,
                           cu_seqlens=cu_seqlens)
