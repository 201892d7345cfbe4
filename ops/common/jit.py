"""``@triton.jit`` helpers shared by the kernel families: row mapping (logical time -> physical row, which is how
``reverse=True`` runs without flipping anything), sequence / chunk bounds from the tables of ``varlen.py``, and
tiles of rows of a ``[rows, H * D]`` tensor (row stride ``stride``, head offset ``off``)."""
import triton
import triton.language as tl

from .options import interpreting


@triton.jit
def phys_row(t, bos, eos, REVERSE: tl.constexpr):
    """Physical row of logical step ``t`` of the sequence ``[bos, eos)`` (right to left under REVERSE)."""
    if REVERSE:
        r = eos - 1 - t
    else:
        r = bos + t
    return r


@triton.jit
def seq_bounds(i_n, cu, N, VARLEN: tl.constexpr):
    """Rows ``[bos, eos)`` of sequence ``i_n``: ``cu[i_n], cu[i_n + 1]`` packed, ``i_n * N + [0, N)`` dense."""
    if VARLEN:
        bos = tl.load(cu + i_n).to(tl.int32)
        eos = tl.load(cu + i_n + 1).to(tl.int32)
    else:
        bos = i_n * N
        eos = bos + N
    return bos, eos


@triton.jit
def seq_info(i_nh, cu, chunk_off, N, NT, H, VARLEN: tl.constexpr):
    """(sequence, head, bos, eos, first chunk row) of program ``i_nh`` over sequences x heads."""
    i_n = i_nh // H
    i_h = i_nh % H
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    if VARLEN:
        c0 = tl.load(chunk_off + i_n)
    else:
        c0 = i_n * NT
    return i_n, i_h, bos, eos, c0


@triton.jit
def chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN: tl.constexpr):
    """(sequence, head, chunk index in the sequence, bos, eos, chunk row) of chunk program ``i_c`` (grid of
    ``ChunkTable``)."""
    i_b = i_bh // H
    i_h = i_bh % H
    if VARLEN:
        i_n = tl.load(chunk_seq + i_c)
        i_t = tl.load(chunk_idx + i_c)
        hc = i_c
    else:
        i_n = i_b
        i_t = i_c
        hc = i_b * NT + i_c
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    return i_n, i_h, i_t, bos, eos, hc


@triton.jit
def load_tile(ptr, r, m, c, D, stride, off):
    """fp32 tile ``[rows r (mask m), columns c < D]`` of a tensor with row stride ``stride`` from ``off``."""
    p = ptr + r.to(tl.int64)[:, None] * stride + off + c[None, :]
    return tl.load(p, mask=m[:, None] & (c[None, :] < D), other=0.).to(tl.float32)


@triton.jit
def store_tile(ptr, x, r, m, c, D, stride, off):
    p = ptr + r.to(tl.int64)[:, None] * stride + off + c[None, :]
    tl.store(p, x.to(ptr.dtype.element_ty), mask=m[:, None] & (c[None, :] < D))


@triton.jit
def load_row(ptr, r, c, D, stride, off):
    """fp32 vector of columns ``c < D`` of row ``r``."""
    return tl.load(ptr + r.to(tl.int64) * stride + off + c, mask=c < D, other=0.).to(tl.float32)


@triton.jit
def rne_bf16(x):
    """fp32 -> nearest bf16 value (ties to even), kept in fp32; finite inputs."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def pair_diff(Gi, Gj):
    """Pairwise G_i - G_j in float32 from float64 vectors without a float64 matrix: each G is split into
    float32 hi + lo parts; hi_i - hi_j is exact when the two are within a factor 2 (Sterbenz) and otherwise
    the difference is large and its rounding irrelevant to the exp."""
    hi_i = Gi.to(tl.float32)
    lo_i = (Gi - hi_i.to(tl.float64)).to(tl.float32)
    hi_j = Gj.to(tl.float32)
    lo_j = (Gj - hi_j.to(tl.float64)).to(tl.float32)
    return (hi_i[:, None] - hi_j[None, :]) + (lo_i[:, None] - lo_j[None, :])


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    """``tl.dot(a, b)`` in fp32 accumulation; PREC 'bf16' / 'fp16' casts both operands to that 16-bit type first
    (the 16-bit tensor-core path), 'bf16_emu' rounds them to bf16 and multiplies in fp32 (the same numbers, for
    Triton's CPU interpreter, whose bf16 ``tl.dot`` is wrong: :func:`dot_prec`), else it is ``tl.dot``'s
    ``input_precision`` ('ieee', 'tf32', 'tf32x3')."""
    if PREC == 'bf16':
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == 'bf16_emu':
        out = tl.dot(rne_bf16(a.to(tl.float32)), rne_bf16(b.to(tl.float32)), input_precision='ieee')
    elif PREC == 'fp16':
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


def dot_prec(prec):
    """Host side of :func:`dot`: ``prec`` as the kernels take it ('bf16' -> 'bf16_emu' under the interpreter)."""
    return 'bf16_emu' if prec == 'bf16' and interpreting() else prec
