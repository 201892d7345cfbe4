"""Dispatch of the public ops and their registration as ``torch.library`` custom ops (``torch.compile``).

Every public op is the custom op ``vla_mm::<name>``: ``torch.compile`` sees one opaque node with a fake (meta)
implementation and an autograd formula, and never traces into a kernel launcher. Inside the op:

* Triton kernels when :func:`use_triton` says so (CUDA tensors; or ``kernel_options(backend='triton')``);
* the plain PyTorch reference otherwise (CPU and other devices, float64 inputs, ``VLA_OPS_REFERENCE=1``).

The backward is a second custom op ``vla_mm::<name>_backward``: the Triton path calls the family's Triton
backward on what its forward kept; the reference path (and a Triton path registered without a backward of its
own) recomputes the forward under autograd and takes ``torch.autograd.grad``.

Eager calls skip the dispatcher: outside ``torch.compile`` / ``torch.jit`` tracing, functorch transforms and
Python dispatch modes (fake tensors, FLOP counters), with plain tensors, the op runs the same two
implementations through a ``torch.autograd.Function`` (the custom op's Python dispatch costs tens of
microseconds per call, which a user pays on every layer). ``kernel_options(eager_path='custom_op')`` forces the
custom op in eager mode too.

Registering a family's op (:func:`register_op`) takes a few lines::

    _op = register_op(
        'hgrn', '(Tensor x, Tensor g, Tensor? initial_state, Tensor? cu_seqlens, bool output_final_state, '
                'bool reverse, bool gated_input, int chunk_size)',
        outputs=2, grads=('x', 'g', 'initial_state'),
        reference=_reference,             # (*args) -> (o, final_state or empty); differentiable by autograd
        triton=_triton_forward,           # (*args) -> ((o, final_state), residuals)
        triton_backward=_triton_backward, # (grad_outputs, outputs, residuals, *args) -> one grad per name in grads
        fake=_fake)                       # (*args) -> outputs (and residuals on the Triton path): metadata only
    o, ht = _op(x, g, None, None, False, False, True, 64)

Schemas take tensors, optional tensors, numbers, bools and strings; no tuples and no None returns: a tuple
argument is split (``rope_cos, rope_sin``) and an output that was not asked for is an empty tensor that the
family's Python wrapper maps back to None. Argument checks belong to that wrapper, before the op.
"""
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .options import current_options, kernel_options

NAMESPACE = 'vla_mm'


def force_reference() -> bool:
    """``VLA_OPS_REFERENCE=1`` forces the plain PyTorch reference everywhere."""
    return os.environ.get('VLA_OPS_REFERENCE', '0').lower() not in ('', '0', 'false', 'no')


def use_triton(*tensors) -> bool:
    """Dispatch rule of every public op: the options' ``backend`` if it is 'triton' or 'reference'; else
    ``VLA_OPS_REFERENCE=1`` -> reference; else CUDA tensors -> Triton, any other device -> reference. float64
    inputs always take the reference (the kernels compute in fp32).

    Tests run the kernels on CPU tensors under ``TRITON_INTERPRET=1`` through ``backend='triton'`` (each
    family's ``*_triton`` entry point), so a model's CPU tensors never go through the interpreter by accident.
    """
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if any(t.dtype == torch.float64 for t in ts):
        return False
    backend = current_options().backend
    if backend != 'auto':
        return backend == 'triton'
    if force_reference():
        return False
    return all(t.is_cuda for t in ts)


class _autograd_enabled:
    """Record autograd inside an op implementation. The dispatcher runs custom-op kernels with the autograd keys
    excluded (and grad mode off); the recompute backward needs them back for its ``torch.autograd.grad``."""

    def __enter__(self):
        DK = torch._C.DispatchKey
        exclude = torch._C._dispatch_tls_local_exclude_set()
        for key in (DK.AutogradFunctionality, DK.AutogradOther, DK.AutogradNestedTensor):
            exclude = exclude.remove(key)
        self._guard = torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)
        self._grad = torch.enable_grad()
        self._guard.__enter__()
        self._grad.__enter__()

    def __exit__(self, *exc):
        self._grad.__exit__(*exc)
        self._guard.__exit__(*exc)


def eager_function_ok(args) -> bool:
    """May this call skip the custom op and run through the ``autograd.Function``? Only for plain eager calls:
    tracers (dynamo, jit, export), functorch transforms and dispatch modes must see the custom op."""
    # tracers first: dynamo before torch 2.13 cannot trace ContextVar.get (a graph break at every op call)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
        return False
    if current_options().eager_path != 'function':
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _empty_like_device(args):
    dev = next(a.device for a in args if isinstance(a, torch.Tensor))
    return torch.empty(0, dtype=torch.float32, device=dev)


def _fresh(outs, args):
    """Outputs as the op may return them: contiguous, aliasing no input and no other output."""
    seen = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
    res = []
    for o in outs:
        o = o.contiguous()
        if o.numel():
            ptr = o.untyped_storage().data_ptr()
            if ptr in seen:
                o = o.clone()
                ptr = o.untyped_storage().data_ptr()
            seen.add(ptr)
        res.append(o)
    return res


def recompute_grads(fn, args, grad_idx, grad_outputs):
    """Gradients of ``fn(*args)`` (a tuple of outputs) w.r.t. ``args[i]`` for ``i`` in ``grad_idx``, by running
    ``fn`` again under autograd; None for an argument that is None or unused."""
    leaves = {i: args[i].detach().requires_grad_() for i in grad_idx if args[i] is not None}
    call = [leaves.get(i, a) for i, a in enumerate(args)]
    with _autograd_enabled():
        outs = fn(*call)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs)
                 if g is not None and o.numel() and o.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()), [g for _, g in pairs],
                                  allow_unused=True) if pairs and leaves else [None] * len(leaves)
    by_idx = dict(zip(leaves, got))
    return [by_idx.get(i) for i in grad_idx]


def _stand_in(t):
    """A one-element tensor expanded to ``t``'s shape (dtype and device too): what the backward keeps of a tensor
    whose values it does not read."""
    return t.new_empty(()).expand(t.shape)


def register_op(name, schema, *, outputs, grads, reference, triton, fake, triton_backward=None, saves=None,
                saves_outputs=None, backward_needs=False):
    """Define ``vla_mm::<name>`` and ``vla_mm::<name>_backward``; return ``op(*args) -> tuple of outputs``.

    Args:
        name: op name in the ``vla_mm`` namespace.
        schema: the argument list, e.g. ``'(Tensor q, Tensor? g, float scale, bool reverse)'``; the op returns
            ``Tensor[]`` (its ``outputs`` tensors, then what the Triton forward keeps for the backward).
        outputs: number of user-visible outputs.
        grads: names of the differentiable tensor arguments.
        reference: ``reference(*args) -> tuple of outputs``, plain PyTorch, differentiable by autograd.
        triton: with ``triton_backward``: ``triton(*args) -> (outputs, residuals)`` (tuples of tensors);
            without: ``triton(*args) -> outputs``, differentiable by autograd (e.g. an ``autograd.Function``),
            whose backward recomputes the forward (an extra forward pass).
        fake: ``fake(*args)`` -> outputs, followed by the residuals when the Triton path with a backward of its
            own would run (:func:`use_triton` answers the same on fake tensors); metadata only.
        triton_backward: ``triton_backward(grad_outputs, outputs, residuals, *args)`` -> one gradient (or None)
            per name in ``grads``; ``grad_outputs`` holds None for an output that received no gradient.
        saves: names of the tensor arguments whose values ``triton_backward`` reads (default: all); on the Triton
            path the others reach it as stand-ins of their shape, dtype and device (:func:`_stand_in`), so the
            autograd graph does not keep them alive (e.g. a block's residual branch after a fused add + norm).
        saves_outputs: indices of the outputs whose values ``triton_backward`` reads (default: all); the others
            as ``saves``. The residuals are always kept.
        backward_needs: ``triton_backward`` also takes ``needs=`` (a bool per name in ``grads``: whether autograd
            asked for that gradient), so that it can skip work, or precision, that only an unasked gradient needs.

    Float64 inputs and empty outputs need nothing special: the reference handles float64 (:func:`use_triton`).
    """
    qual = f'{NAMESPACE}::{name}'
    parsed = torch._C.parse_schema(f'{qual}{schema} -> Tensor[]')
    arg_names = [a.name for a in parsed.arguments]
    unknown = set(grads) - set(arg_names)
    if unknown:
        raise ValueError(f'grads {sorted(unknown)} are not arguments of {qual}{schema}')
    grad_idx = [arg_names.index(n) for n in grads]
    with_bwd = triton_backward is not None
    unknown = set(saves or ()) - set(arg_names)
    if unknown:
        raise ValueError(f'saves {sorted(unknown)} are not arguments of {qual}{schema}')
    drop_args = set() if saves is None else {i for i, n in enumerate(arg_names) if n not in saves}
    drop_outs = set() if saves_outputs is None else set(range(outputs)) - set(saves_outputs)

    def run_forward(triton_path, args):
        """The outputs, then the residuals, as the implementation gives them."""
        if triton_path:
            outs, res = triton(*args) if with_bwd else (triton(*args), ())
        else:
            outs, res = reference(*args), ()
        return [*outs, *res]

    def forward_impl(*args):
        return _fresh(run_forward(use_triton(*args), args), args)

    def forward_fake(*args):
        return list(fake(*args))

    def grads_of(grad_outputs, saved, triton_path, needs, *args):
        """One gradient (None where there is none) per name in ``grads``; ``needs``: whether each was asked for."""
        if triton_path and with_bwd:
            extra = dict(needs=tuple(needs)) if backward_needs else {}
            return list(triton_backward(list(grad_outputs), saved[:outputs], saved[outputs:], *args, **extra))
        return recompute_grads(triton if triton_path else reference, args, grad_idx, grad_outputs)

    def backward_impl(grad_outputs, saved, triton_path, needs, *args):
        gs = grads_of(grad_outputs, saved, triton_path, needs, *args)
        inputs = [*grad_outputs, *saved, *args]
        return _fresh([_zeros_or_empty(g, args[i], args) for g, i in zip(gs, grad_idx)], inputs)

    def backward_fake(grad_outputs, saved, triton_path, needs, *args):
        return [args[i].new_empty(args[i].shape) if args[i] is not None else _empty_like_device(args)
                for i in grad_idx]

    fwd = torch.library.custom_op(qual, forward_impl, mutates_args=(), schema=f'{schema} -> Tensor[]')
    fwd.register_fake(forward_fake)
    bwd_schema = f'(Tensor?[] grad_outputs, Tensor[] saved, bool triton_path, bool[] needs, {schema[1:]} -> Tensor[]'
    bwd = torch.library.custom_op(f'{qual}_backward', backward_impl, mutates_args=(), schema=bwd_schema)
    bwd.register_fake(backward_fake)

    def setup_context(ctx, inputs, output, triton_path=None):
        """Keep the inputs, the outputs, the path and the options for the backward (both autograd routes)."""
        ctx.tensor_idx = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.template = [None if isinstance(a, torch.Tensor) else a for a in inputs]
        ctx.triton_path = use_triton(*inputs) if triton_path is None else triton_path
        ctx.options = current_options()
        slim = ctx.triton_path and with_bwd   # only a backward of our own reads less than everything
        skip_in, skip_out = (drop_args, drop_outs) if slim else ((), ())
        ctx.save_for_backward(*[_stand_in(inputs[i]) if i in skip_in else inputs[i] for i in ctx.tensor_idx],
                              *[_stand_in(o) if j in skip_out else o for j, o in enumerate(output)])
        ctx.set_materialize_grads(False)

    def backward_with(run_backward, ctx, grad_outputs):
        """The input gradients from what ``setup_context`` kept, ``run_backward`` being the backward custom op
        (traced route) or its implementation (eager route)."""
        saved = ctx.saved_tensors
        n = len(ctx.tensor_idx)
        args = list(ctx.template)
        for i, t in zip(ctx.tensor_idx, saved[:n]):
            args[i] = t
        needs = [bool(ctx.needs_input_grad[i]) for i in grad_idx]
        if ctx.options is current_options():   # the usual case: no kernel_options block to re-enter
            gs = run_backward(list(grad_outputs[:outputs]), list(saved[n:]), ctx.triton_path, needs, *args)
        else:
            with kernel_options(ctx.options):
                gs = run_backward(list(grad_outputs[:outputs]), list(saved[n:]), ctx.triton_path, needs, *args)
        result = [None] * len(args)
        for j, i in enumerate(grad_idx):
            if args[i] is not None and needs[j]:
                result[i] = gs[j]
        return tuple(result)

    fwd.register_autograd(lambda ctx, grad_outputs: backward_with(bwd, ctx, grad_outputs),
                          setup_context=setup_context)

    def contiguous_grads(*a):
        return [g if g is None else g.contiguous() for g in grads_of(*a)]

    class Eager(torch.autograd.Function):
        """The same forward and backward implementations without the dispatcher (eager calls): outputs and
        gradients contiguous as the custom op's, but not copied where they alias an input (autograd wraps an input
        returned as an output), and a missing gradient stays None."""

        @staticmethod
        def forward(ctx, *args):
            triton_path = use_triton(*args)
            outs = [o.contiguous() for o in run_forward(triton_path, args)]
            setup_context(ctx, args, outs, triton_path)
            ctx.mark_non_differentiable(*outs[outputs:])
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grad_outputs):
            return backward_with(contiguous_grads, ctx, grad_outputs)

    def op(*args):
        if eager_function_ok(args):
            if torch.is_grad_enabled() and any(args[i] is not None and args[i].requires_grad for i in grad_idx):
                return Eager.apply(*args)[:outputs]
            # nothing to differentiate: the forward alone, without the autograd.Function's context
            return tuple(o.contiguous() for o in run_forward(use_triton(*args), args)[:outputs])
        return tuple(fwd(*args)[:outputs])

    op.custom_op = fwd
    op.backward_op = bwd
    op.function = Eager
    return op


def _zeros_or_empty(grad, arg, args):
    """The gradient of ``arg``; zeros when it got none; an empty tensor when ``arg`` is None."""
    if arg is None:
        return _empty_like_device(args)
    return torch.zeros_like(arg, memory_format=torch.contiguous_format) if grad is None else grad
