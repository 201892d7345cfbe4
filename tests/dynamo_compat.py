"""Dynamo as torch releases before 2.13 trace it, for the compile tests on newer CPU wheels.

Before torch 2.13, dynamo could not trace ``ContextVar.get()``: every read of :func:`vla_mm.ops.common.current_options`
inside a compiled region was a graph break (the GPU machine runs torch 2.11: one break at every op call of
every block). :func:`contextvars_untraceable` makes dynamo treat a ContextVar as a plain object again, so a
``fullgraph=True`` compile fails here where it would break there.
"""
import contextlib
import types

import torch


@contextlib.contextmanager
def contextvars_untraceable():
    builder = torch._dynamo.variables.builder
    if not hasattr(builder, 'contextvars'):  # a torch without ContextVar tracing: nothing to undo
        yield
        return
    real = builder.contextvars
    builder.contextvars = types.SimpleNamespace(ContextVar=type('UntracedContextVar', (), {}))
    try:
        yield
    finally:
        builder.contextvars = real
