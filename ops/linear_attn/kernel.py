"""Triton kernels of non-causal linear attention (forward and backward in one ``torch.autograd.Function``).

Definition of the op and of every option: ``reference.py``. Two phases per (sequence, head), each a launch:

  forward   F1  S = sum_j R_j phi(k_j) v_j^T, z = sum_j phi(k_j)   N split over programs, fp32 atomics into S, z
                (one program per sequence under torch.use_deterministic_algorithms(True): repeatable bits)
            F2  o_i = sc * (R_i phi(q_i))^T S / (phi(q_i)^T z + eps')   tiled over N
  backward  B1  u_i = S g_i, d_i = phi(q_i)^T z + eps'; dS = sum_i R_i phi(q_i) (sc g_i / d_i)^T,
                delta_i = -sc (R_i phi(q_i))^T u_i / d_i^2, dz = sum_i delta_i phi(q_i),
                dq_i = phi'(q_i)^T [R_i^T (sc u_i / d_i) + delta_i z]          (dq written in the same pass)
            B2  dk_j = phi'(k_j)^T [R_j^T dS v_j + dz],  dv_j = dS^T R_j phi(k_j)

(R: the optional rotation of interleaved pairs, identity without ``rope``.) The feature map and its derivative
are recomputed inside the kernels from q and k, so the forward reads q, k, v and writes o, the backward reads
q, k, v, do and writes dq, dk, dv: one pass over each tensor, plus the small fp32 states S, z, dS, dz.
Nothing of size N is saved for the backward.

Dots: fp32 inputs use exact fp32 dots (``input_precision='ieee'``); bf16/fp16 inputs use bf16 operands with
fp32 accumulation (bf16 rather than fp16 so that large states cannot overflow). Feature maps, normalizers and
all reductions run in fp32.
"""
import functools
from types import MappingProxyType, SimpleNamespace

import torch
import triton
import triton.language as tl

from ..common.launch import jit
from ..common.options import (alloc, cdiv, current_options, declare_launch, dummy, interpreting, next_power_of_2,
                              num_sms)
from ..common.jit import dot, rne_bf16
from ..common.varlen import PackedSeqs

FOCUS_EPS = 1e-6
_FMAP = MappingProxyType({'identity': 0, 'elu1': 1, 'relu': 2, 'focused': 3})
# launch settings (``kernel_options(launch={'linear_attn': {...}})`` overrides): None = chosen from the head dims;
# programs per SM of the reducing (F1, B1) and of the streaming (F2, B2) kernels
LAUNCH_DEFAULTS = MappingProxyType(dict(block_n=None, num_warps=None, num_stages=None, programs_per_sm_reduce=4,
                                        programs_per_sm_map=16))
declare_launch(LAUNCH_DEFAULTS, 'linear_attn')


# --------------------------------------------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _to_out(x, ptr, EMU: tl.constexpr):
    """Cast an fp32 tile to the element type of ptr (rounding to nearest under the interpreter too)."""
    if EMU:
        if ptr.dtype.element_ty == tl.bfloat16:
            x = rne_bf16(x)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, EMU: tl.constexpr):
    """fp32 operands in 'ieee' dots, else bf16 operands (emulated under the interpreter: ``ops.common.jit.dot``)."""
    if IEEE:
        return dot(a, b, 'ieee')
    elif EMU:
        return dot(a, b, 'bf16_emu')
    else:
        return dot(a, b, 'bf16')


@triton.jit
def _pow(u, P: tl.constexpr, P_INT: tl.constexpr):
    """u ** P for u >= 0 (P_INT > 0: P is that integer, exact products)."""
    if P_INT > 0:
        y = u
        for _ in tl.static_range(P_INT - 1):
            y = y * u
    else:
        y = tl.where(u > 0, tl.exp2(tl.log2(tl.maximum(u, 1e-38)) * P).to(tl.float32), 0.0)
    return y


@triton.jit
def _powm1(u, P: tl.constexpr, P_INT: tl.constexpr):
    """u ** (P - 1) for u > 0."""
    if P_INT > 0:
        y = tl.full(u.shape, 1.0, tl.float32)
        for _ in tl.static_range(P_INT - 1):
            y = y * u
    else:
        y = tl.where(u > 0, tl.exp2(tl.log2(tl.maximum(u, 1e-38)) * (P - 1.0)).to(tl.float32), 0.0)
    return y


@triton.jit
def _phi(x, kmask, FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr):
    """Feature map of an fp32 tile x [BN, BK]; kmask [1, BK] marks the real head-dim columns."""
    if FMAP == 0:
        y = x
    elif FMAP == 1:
        y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif FMAP == 2:
        y = tl.maximum(x, 0.0)
    else:
        r = tl.where(kmask, tl.maximum(x, 0.0) + FEPS, 0.0)
        m = tl.max(r, axis=1)                                   # row max > 0: scale-free, no overflow
        u = r / m[:, None]
        up = _pow(u, P, P_INT)
        nu = tl.sqrt(tl.sum(u * u, axis=1))
        na = tl.sqrt(tl.sum(up * up, axis=1))
        y = up * (m * nu / na)[:, None]
    return tl.where(kmask, y, 0.0)


@triton.jit
def _phi_bwd(x, g, kmask, FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr):
    """dL/dx from g = dL/dphi (both fp32 [BN, BK])."""
    if FMAP == 0:
        dx = g
    elif FMAP == 1:
        dx = tl.where(x > 0, g, g * tl.exp(tl.minimum(x, 0.0)))
    elif FMAP == 2:
        dx = tl.where(x > 0, g, 0.0)
    else:
        # r = relu(x) + eps, u = r / m, phi = m u^p |u| / |u^p|:
        # dL/dr = p (phi / r) (g - s phi / |r|^2) + r s / |r|^2 with s = g . phi, written in u to stay finite
        r = tl.where(kmask, tl.maximum(x, 0.0) + FEPS, 0.0)
        m = tl.max(r, axis=1)
        u = r / m[:, None]
        up = _pow(u, P, P_INT)
        nu = tl.sqrt(tl.sum(u * u, axis=1))
        na = tl.sqrt(tl.sum(up * up, axis=1))
        s = tl.sum(g * up, axis=1) * (m * nu / na)
        w = _powm1(u, P, P_INT) * (nu / na)[:, None]
        dr = (w * P).to(tl.float32) * (g - up * (s / (m * nu * na))[:, None]) + u * (s / (m * nu * nu))[:, None]
        dx = tl.where(x > 0, dr, 0.0)
    return tl.where(kmask, dx, 0.0)


@triton.jit
def _rot(x, c, s, BN: tl.constexpr, BK: tl.constexpr):
    """Rotate interleaved pairs of x [BN, BK] by the angles of c = cos, s = sin [BN, BK // 2]."""
    e, o = tl.split(tl.reshape(x, (BN, BK // 2, 2)))
    return tl.reshape(tl.join(e * c - o * s, e * s + o * c), (BN, BK))


@triton.jit
def _work_item(tab, pid_c, CH, N, VARLEN: tl.constexpr):
    """(sequence, first row, end row) of this program's chunk."""
    if VARLEN:
        seq = tl.load(tab + pid_c * 3)
        start = tl.load(tab + pid_c * 3 + 1)
        end = tl.load(tab + pid_c * 3 + 2)
    else:
        seq = pid_c * 0
        start = pid_c * CH
        end = tl.minimum(start + CH, N)
    return seq, start, end


@triton.jit
def _program(tab, CH, N, H, VARLEN: tl.constexpr):
    """(batch, head, V block, sequence, first row, end row) of this program: chunk ``program_id(0)`` of (batch,
    head) ``program_id(1)``, V block ``program_id(2)``."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    vb = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    seq, start, end = _work_item(tab, pid_c, CH, N, VARLEN)
    if not VARLEN:
        seq = b
    return b, h, vb, seq, start, end


@triton.jit
def _seq_consts(ntab, seq, n_const, scale, eps, HAS_NTAB: tl.constexpr, SCALE_INV_N: tl.constexpr,
                EPS_N: tl.constexpr):
    if HAS_NTAB:
        n = tl.maximum(tl.load(ntab + seq).to(tl.float32), 1.0)
    else:
        n = n_const
    sc = scale
    if SCALE_INV_N:
        sc = 1.0 / n
    ep = eps
    if EPS_N:
        ep = eps * n
    return sc, ep


@triton.jit
def _valid_rows(mask_ptr, b, offs_n, rm, smb, smn, HAS_MASK: tl.constexpr):
    if HAS_MASK:
        mv = tl.load(mask_ptr + b * smb + offs_n * smn, mask=rm, other=0)
        return rm & (mv != 0)
    else:
        return rm


@triton.jit
def _load_rope(c_ptr, s_ptr, b, h, offs_n, rm, scb, scn, sch, scd, ssb, ssn, ssh, ssd,
               K2, BK: tl.constexpr):
    offs = tl.arange(0, BK // 2)
    msk = rm[:, None] & (offs < K2)[None, :]
    c = tl.load(c_ptr + b * scb + h * sch + offs_n[:, None] * scn + offs[None, :] * scd, mask=msk, other=0.0)
    s = tl.load(s_ptr + b * ssb + h * ssh + offs_n[:, None] * ssn + offs[None, :] * ssd, mask=msk, other=0.0)
    return c.to(tl.float32), s.to(tl.float32)


@triton.jit
def _feature_rows(ptr, b, h, offs_n, rm, offs_k, kmask, sb, sn, sh, sk, cos_ptr, sin_ptr, scb, scn, sch, scd, ssb,
                  ssn, ssh, ssd, K, FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr,
                  ROPE: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Rows ``offs_n`` of q or k: (x in fp32, phi(x), phi(x) rotated, the rotation's cos and sin)."""
    x = tl.load(ptr + b * sb + h * sh + offs_n[:, None] * sn + offs_k[None, :] * sk,
                mask=rm[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    f = _phi(x, kmask[None, :], FMAP, P, P_INT, FEPS)
    if ROPE:
        c, s = _load_rope(cos_ptr, sin_ptr, b, h, offs_n, rm, scb, scn, sch, scd, ssb, ssn, ssh, ssd, K // 2, BK)
        r = _rot(f, c, s, BN, BK)
    else:
        c, s, r = 0.0, 0.0, f
    return x, f, r, c, s


# --------------------------------------------------------------------------------------------------------------
# F1: states S, z
# --------------------------------------------------------------------------------------------------------------
@jit
def _fwd_state_kernel(
        k_ptr, v_ptr, S_ptr, z_ptr, mask_ptr, tab_ptr, cos_ptr, sin_ptr,
        N, H, K, V, CH,
        skb, skn, skh, skk, svb, svn, svh, svv, smb, smn,
        scb, scn, sch, scd, ssb, ssn, ssh, ssd,
        FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr,
        NORMALIZE: tl.constexpr, ROPE: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr,
        IEEE: tl.constexpr, EMU: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    b, h, vb, seq, start, end = _program(tab_ptr, CH, N, H, VARLEN)
    offs_k = tl.arange(0, BK)
    offs_v = vb * BV + tl.arange(0, BV)
    kmask = offs_k < K
    vmask = offs_v < V
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    zacc = tl.zeros([BK], dtype=tl.float32)
    for n0 in range(start, end, BN):
        offs_n = (n0 + tl.arange(0, BN)).to(tl.int64)
        rm = offs_n < end
        valid = _valid_rows(mask_ptr, b, offs_n, rm, smb, smn, HAS_MASK)
        x = tl.load(k_ptr + b * skb + h * skh + offs_n[:, None] * skn + offs_k[None, :] * skk,
                    mask=rm[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        fk = _phi(x, kmask[None, :], FMAP, P, P_INT, FEPS)
        fk = tl.where(valid[:, None], fk, 0.0)
        vt = tl.load(v_ptr + b * svb + h * svh + offs_n[:, None] * svn + offs_v[None, :] * svv,
                     mask=rm[:, None] & vmask[None, :], other=0.0)
        if HAS_MASK:
            vt = tl.where(valid[:, None], vt, 0.0)
        if ROPE:
            c, s = _load_rope(cos_ptr, sin_ptr, b, h, offs_n, rm, scb, scn, sch, scd, ssb, ssn, ssh, ssd,
                              K // 2, BK)
            rk = _rot(fk, c, s, BN, BK)
        else:
            rk = fk
        if IEEE:
            acc += _dot(tl.trans(rk), vt.to(tl.float32), IEEE, EMU)
        else:
            acc += _dot(tl.trans(rk), vt, IEEE, EMU)
        if NORMALIZE:
            zacc += tl.sum(fk, axis=0)
    base = seq * H + h
    tl.atomic_add(S_ptr + base * K * V + offs_k[:, None] * V + offs_v[None, :], acc,
                  mask=kmask[:, None] & vmask[None, :], sem='relaxed')
    if NORMALIZE:
        if vb == 0:
            tl.atomic_add(z_ptr + base * K + offs_k, zacc, mask=kmask, sem='relaxed')


# --------------------------------------------------------------------------------------------------------------
# F2: outputs
# --------------------------------------------------------------------------------------------------------------
@jit
def _fwd_out_kernel(
        q_ptr, o_ptr, S_ptr, z_ptr, mask_ptr, tab_ptr, ntab_ptr, cos_ptr, sin_ptr,
        N, H, K, V, CH, n_const, scale, eps,
        sqb, sqn, sqh, sqk, sob, son, soh, sov, smb, smn,
        scb, scn, sch, scd, ssb, ssn, ssh, ssd,
        FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr,
        NORMALIZE: tl.constexpr, ROPE: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr,
        HAS_NTAB: tl.constexpr, SCALE_INV_N: tl.constexpr, EPS_N: tl.constexpr,
        IEEE: tl.constexpr, EMU: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    b, h, vb, seq, start, end = _program(tab_ptr, CH, N, H, VARLEN)
    sc, ep = _seq_consts(ntab_ptr, seq, n_const, scale, eps, HAS_NTAB, SCALE_INV_N, EPS_N)
    offs_k = tl.arange(0, BK)
    offs_v = vb * BV + tl.arange(0, BV)
    kmask = offs_k < K
    vmask = offs_v < V
    base = seq * H + h
    S = tl.load(S_ptr + base * K * V + offs_k[:, None] * V + offs_v[None, :],
                mask=kmask[:, None] & vmask[None, :], other=0.0)
    if not IEEE:
        S = S.to(tl.bfloat16)
    if NORMALIZE:
        z = tl.load(z_ptr + base * K + offs_k, mask=kmask, other=0.0)
    for n0 in range(start, end, BN):
        offs_n = (n0 + tl.arange(0, BN)).to(tl.int64)
        rm = offs_n < end
        valid = _valid_rows(mask_ptr, b, offs_n, rm, smb, smn, HAS_MASK)
        x, fq, rq, c, s = _feature_rows(q_ptr, b, h, offs_n, rm, offs_k, kmask, sqb, sqn, sqh, sqk, cos_ptr, sin_ptr,
                                        scb, scn, sch, scd, ssb, ssn, ssh, ssd, K, FMAP, P, P_INT, FEPS, ROPE, BN, BK)
        num = _dot(rq, S, IEEE, EMU)
        if NORMALIZE:
            den = tl.sum(fq * z[None, :], axis=1) + ep
            o = num * (sc / den)[:, None]
        else:
            o = num * sc
        if HAS_MASK:
            o = tl.where(valid[:, None], o, 0.0)
        tl.store(o_ptr + b * sob + h * soh + offs_n[:, None] * son + offs_v[None, :] * sov,
                 _to_out(o, o_ptr, EMU), mask=rm[:, None] & vmask[None, :])


# --------------------------------------------------------------------------------------------------------------
# B1: dS, dz (reductions over the queries) and dq
# --------------------------------------------------------------------------------------------------------------
@jit
def _bwd_q_kernel(
        q_ptr, do_ptr, dq_ptr, S_ptr, z_ptr, dS_ptr, dz_ptr, mask_ptr, tab_ptr, ntab_ptr, cos_ptr, sin_ptr,
        N, H, K, V, CH, n_const, scale, eps,
        sqb, sqn, sqh, sqk, sgb, sgn, sgh, sgv, sdb, sdn, sdh, sdk, smb, smn,
        scb, scn, sch, scd, ssb, ssn, ssh, ssd,
        FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr,
        NORMALIZE: tl.constexpr, ROPE: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr,
        HAS_NTAB: tl.constexpr, SCALE_INV_N: tl.constexpr, EPS_N: tl.constexpr,
        DO_DS: tl.constexpr, DO_DQ: tl.constexpr, NV: tl.constexpr,
        IEEE: tl.constexpr, EMU: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """DO_DS: accumulate dS[:, vb] (vb = program_id(2)). DO_DQ: write dq and accumulate dz (all V blocks)."""
    b, h, vb, seq, start, end = _program(tab_ptr, CH, N, H, VARLEN)
    sc, ep = _seq_consts(ntab_ptr, seq, n_const, scale, eps, HAS_NTAB, SCALE_INV_N, EPS_N)
    offs_k = tl.arange(0, BK)
    kmask = offs_k < K
    base = seq * H + h
    offs_v = vb * BV + tl.arange(0, BV)
    vmask = offs_v < V
    if NORMALIZE:
        z = tl.load(z_ptr + base * K + offs_k, mask=kmask, other=0.0)
    if NV == 1:
        S0 = tl.load(S_ptr + base * K * V + offs_k[:, None] * V + offs_v[None, :],
                     mask=kmask[:, None] & vmask[None, :], other=0.0)
        if not IEEE:
            S0 = S0.to(tl.bfloat16)
    dS_acc = tl.zeros([BK, BV], dtype=tl.float32)
    dz_acc = tl.zeros([BK], dtype=tl.float32)
    for n0 in range(start, end, BN):
        offs_n = (n0 + tl.arange(0, BN)).to(tl.int64)
        rm = offs_n < end
        valid = _valid_rows(mask_ptr, b, offs_n, rm, smb, smn, HAS_MASK)
        x, fq, rq, c, s = _feature_rows(q_ptr, b, h, offs_n, rm, offs_k, kmask, sqb, sqn, sqh, sqk, cos_ptr, sin_ptr,
                                        scb, scn, sch, scd, ssb, ssn, ssh, ssd, K, FMAP, P, P_INT, FEPS, ROPE, BN, BK)
        if NORMALIZE:
            den = tl.sum(fq * z[None, :], axis=1) + ep
            inv = sc / den
        else:
            inv = tl.full([BN], 1.0, tl.float32) * sc
        if DO_DS:
            g = tl.load(do_ptr + b * sgb + h * sgh + offs_n[:, None] * sgn + offs_v[None, :] * sgv,
                        mask=valid[:, None] & vmask[None, :], other=0.0).to(tl.float32)
            dS_acc += _dot(tl.trans(rq), g * inv[:, None], IEEE, EMU)
        if DO_DQ:
            if NV == 1:
                if not DO_DS:
                    g = tl.load(do_ptr + b * sgb + h * sgh + offs_n[:, None] * sgn + offs_v[None, :] * sgv,
                                mask=valid[:, None] & vmask[None, :], other=0.0).to(tl.float32)
                u = _dot(g, tl.trans(S0), IEEE, EMU)
            else:
                u = tl.zeros([BN, BK], dtype=tl.float32)
                for j in tl.static_range(NV):
                    offs_v2 = j * BV + tl.arange(0, BV)
                    vmask2 = offs_v2 < V
                    g2 = tl.load(do_ptr + b * sgb + h * sgh + offs_n[:, None] * sgn + offs_v2[None, :] * sgv,
                                 mask=valid[:, None] & vmask2[None, :], other=0.0).to(tl.float32)
                    S2 = tl.load(S_ptr + base * K * V + offs_k[:, None] * V + offs_v2[None, :],
                                 mask=kmask[:, None] & vmask2[None, :], other=0.0)
                    u += _dot(g2, tl.trans(S2), IEEE, EMU)
            # u = S g (rotated space); gradient w.r.t. the rotated features is inv * u
            dr = u * inv[:, None]
            if ROPE:
                dfq = _rot(dr, c, -s, BN, BK)
            else:
                dfq = dr
            if NORMALIZE:
                delta = -tl.sum(rq * dr, axis=1) / den
                dfq += delta[:, None] * z[None, :]
                dz_acc += tl.sum(delta[:, None] * fq, axis=0)
            dq = _phi_bwd(x, dfq, kmask[None, :], FMAP, P, P_INT, FEPS)
            dq = tl.where(valid[:, None], dq, 0.0)
            tl.store(dq_ptr + b * sdb + h * sdh + offs_n[:, None] * sdn + offs_k[None, :] * sdk,
                     _to_out(dq, dq_ptr, EMU), mask=rm[:, None] & kmask[None, :])
    if DO_DS:
        tl.atomic_add(dS_ptr + base * K * V + offs_k[:, None] * V + offs_v[None, :], dS_acc,
                      mask=kmask[:, None] & vmask[None, :], sem='relaxed')
    if DO_DQ:
        if NORMALIZE:
            tl.atomic_add(dz_ptr + base * K + offs_k, dz_acc, mask=kmask, sem='relaxed')


# --------------------------------------------------------------------------------------------------------------
# B2: dk, dv
# --------------------------------------------------------------------------------------------------------------
@jit
def _bwd_kv_kernel(
        k_ptr, v_ptr, dk_ptr, dv_ptr, dS_ptr, dz_ptr, mask_ptr, tab_ptr, cos_ptr, sin_ptr,
        N, H, K, V, CH,
        skb, skn, skh, skk, svb, svn, svh, svv, sdkb, sdkn, sdkh, sdkk, sdvb, sdvn, sdvh, sdvv, smb, smn,
        scb, scn, sch, scd, ssb, ssn, ssh, ssd,
        FMAP: tl.constexpr, P: tl.constexpr, P_INT: tl.constexpr, FEPS: tl.constexpr,
        NORMALIZE: tl.constexpr, ROPE: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr,
        NV: tl.constexpr, IEEE: tl.constexpr, EMU: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    b, h, _, seq, start, end = _program(tab_ptr, CH, N, H, VARLEN)
    offs_k = tl.arange(0, BK)
    kmask = offs_k < K
    base = seq * H + h
    if NORMALIZE:
        dz = tl.load(dz_ptr + base * K + offs_k, mask=kmask, other=0.0)
    if NV == 1:
        offs_v0 = tl.arange(0, BV)
        dS0 = tl.load(dS_ptr + base * K * V + offs_k[:, None] * V + offs_v0[None, :],
                      mask=kmask[:, None] & (offs_v0 < V)[None, :], other=0.0)
        if not IEEE:
            dS0 = dS0.to(tl.bfloat16)
    for n0 in range(start, end, BN):
        offs_n = (n0 + tl.arange(0, BN)).to(tl.int64)
        rm = offs_n < end
        valid = _valid_rows(mask_ptr, b, offs_n, rm, smb, smn, HAS_MASK)
        x, fk, rk, c, s = _feature_rows(k_ptr, b, h, offs_n, rm, offs_k, kmask, skb, skn, skh, skk, cos_ptr, sin_ptr,
                                        scb, scn, sch, scd, ssb, ssn, ssh, ssd, K, FMAP, P, P_INT, FEPS, ROPE, BN, BK)
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for j in tl.static_range(NV):
            offs_v = j * BV + tl.arange(0, BV)
            vmask = offs_v < V
            if NV == 1:
                dSj = dS0
            else:
                dSj = tl.load(dS_ptr + base * K * V + offs_k[:, None] * V + offs_v[None, :],
                              mask=kmask[:, None] & vmask[None, :], other=0.0)
                if not IEEE:
                    dSj = dSj.to(tl.bfloat16)
            vt = tl.load(v_ptr + b * svb + h * svh + offs_n[:, None] * svn + offs_v[None, :] * svv,
                         mask=valid[:, None] & vmask[None, :], other=0.0)
            if IEEE:
                vt = vt.to(tl.float32)
            acc += _dot(vt, tl.trans(dSj), IEEE, EMU)
            dv = _dot(rk, dSj, IEEE, EMU)
            dv = tl.where(valid[:, None], dv, 0.0)
            tl.store(dv_ptr + b * sdvb + h * sdvh + offs_n[:, None] * sdvn + offs_v[None, :] * sdvv,
                     _to_out(dv, dv_ptr, EMU), mask=rm[:, None] & vmask[None, :])
        if ROPE:
            dfk = _rot(acc, c, -s, BN, BK)
        else:
            dfk = acc
        if NORMALIZE:
            dfk += dz[None, :]
        dk = _phi_bwd(x, dfk, kmask[None, :], FMAP, P, P_INT, FEPS)
        dk = tl.where(valid[:, None], dk, 0.0)
        tl.store(dk_ptr + b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_k[None, :] * sdkk,
                 _to_out(dk, dk_ptr, EMU), mask=rm[:, None] & kmask[None, :])


# --------------------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------------------
def _blocks(K, V, ieee, cfg, rope=False, focused=False):
    BK = max(16, next_power_of_2(K))
    tile = 4096 if ieee else 8192          # fp32 operands take twice the shared memory
    BV = min(max(16, next_power_of_2(V)), max(16, tile // BK))
    NV = cdiv(V, BV)
    # 64-row tiles: three blocks an SM instead of one, and no spill with RoPE's cos / sin tiles; the focused map
    # keeps 128 rows, faster than 64 at 8 warps (docs/benchmarks/linear_attn.md, "Occupancy")
    BN = cfg['block_n'] or max(16, min(128 if focused and not rope else 64, tile // BK))
    num_warps = cfg['num_warps'] or (8 if BN * BK >= (4096 if rope else 8192) else 4)
    return BN, BK, BV, NV, num_warps


def launch_config():
    """This family's launch settings: ``LAUNCH_DEFAULTS`` under the options' ``launch['linear_attn']``."""
    return current_options().settings('linear_attn', LAUNCH_DEFAULTS)


@functools.lru_cache(maxsize=None)
def _fallback(key):
    """Launch options found to fit in shared memory for one (kernel, blocks, constexprs) key; filled by _launch."""
    return {}


def _launch(kernel, grid, args, consts, P):
    """Launch with the plan's blocks; if they do not fit in shared memory, retry with fewer stages and rows. The
    options that launched are kept on the plan per (kernel, constexprs): a cached plan's next call looks them up
    instead of rebuilding the fallback key (host time on every launch)."""
    ckey = (kernel, tuple(consts.items()))
    opts = P.launch_opts.get(ckey)
    if opts is not None:
        return kernel[grid](*args, **consts, **opts)
    opts = dict(BN=P.BN, BK=P.BK, BV=P.BV, num_warps=P.num_warps, num_stages=P.num_stages)
    key = (getattr(kernel, 'fn', kernel).__name__, P.BK, P.BV,
           tuple(sorted((k, v) for k, v in consts.items())), tuple(sorted(opts.items())))
    known = _fallback(key)
    opts = dict(known or opts)
    while True:
        try:
            out = kernel[grid](*args, **consts, **opts)
            P.launch_opts[ckey] = opts
            return out
        except triton.runtime.errors.OutOfResources:
            if opts['num_stages'] > 1:
                opts['num_stages'] = 1
            elif opts['BN'] > 16:
                opts['BN'] //= 2
            else:
                raise
            known.update(opts)


class _Plan:
    """Everything the four kernels share: chunking of N, per-sequence counts, rope tables, flags.

    ``q`` / ``v`` give only shapes, dtype and device; ``rope`` is a ``(cos, sin)`` pair or None."""

    def __init__(self, q, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask,
                 cu_seqlens, cfg=None):
        cfg = launch_config() if cfg is None else cfg
        B, N, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        ieee = q.dtype == torch.float32
        self.B, self.N, self.H, self.K, self.V = B, N, H, K, V
        self.launch_opts = {}   # (kernel, constexprs) -> the options that launched (_launch)
        self.BN, self.BK, self.BV, self.NV, self.num_warps = _blocks(K, V, ieee, cfg, rope is not None,
                                                                     feature_map == 'focused')
        self.num_stages = cfg['num_stages'] or (2 if self.BK * self.BV <= 8192 and not ieee else 1)
        BN = self.BN
        sms = num_sms(dev)
        self.varlen = cu_seqlens is not None
        dummy_i, dummy_f = dummy(dev, torch.int32), dummy(dev, torch.float32)
        # two chunkings of N: the kernels that end in atomic reductions (F1, B1) take longer chunks than the
        # kernels that only stream (F2, B2). Under torch.use_deterministic_algorithms(True) the reducing kernels
        # take one chunk per sequence: every element of S, z, dS, dz then receives exactly one fp32 atomic add
        # onto zero, so the result no longer depends on the order in which programs finish (bitwise repeatable
        # runs, at the cost of parallelism over N when B x H is small)
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.chunks = {}
        if self.varlen:
            seqs = PackedSeqs(B, N, cu_seqlens, dev)
            self.nseq = seqs.nseq
            for kind, pps in (('red', cfg['programs_per_sm_reduce']), ('map', cfg['programs_per_sm_map'])):
                split = max(1, cdiv(pps * sms, H))
                CH = max(BN, cdiv(cdiv(N, split), BN) * BN)
                if kind == 'red' and self.deterministic:
                    CH = max(BN, cdiv(seqs.longest(), BN) * BN)
                items = seqs.spans(CH)
                tab = torch.tensor(items, dtype=torch.int32).to(dev) if items else dummy_i
                self.chunks[kind] = (len(items), CH, tab)
            self.ntab = seqs.lengths(torch.float32)
        else:
            self.nseq = B
            for kind, pps in (('red', cfg['programs_per_sm_reduce']), ('map', cfg['programs_per_sm_map'])):
                split = max(1, min(cdiv(N, BN), cdiv(pps * sms, B * H)))
                if kind == 'red' and self.deterministic:
                    split = 1
                CH = cdiv(cdiv(N, split), BN) * BN
                self.chunks[kind] = (cdiv(N, CH), CH, dummy_i)
            self.ntab = key_padding_mask.sum(1, dtype=torch.float32) if key_padding_mask is not None else None
        self.has_ntab = self.ntab is not None
        if self.ntab is None:
            self.ntab = dummy_f
        self.has_mask = key_padding_mask is not None
        if self.has_mask:
            self.mask = key_padding_mask.view(torch.uint8)
            self.smask = self.mask.stride()
        else:
            self.mask, self.smask = dummy_i, (0, 0)
        self.rope = rope is not None
        if self.rope:
            from .reference import expand_rope_table
            self.cos = expand_rope_table(rope[0].to(torch.float32), B, N, H, K // 2)
            self.sin = expand_rope_table(rope[1].to(torch.float32), B, N, H, K // 2)
            self.rope_strides = (*self.cos.stride(), *self.sin.stride())
        else:
            self.cos = self.sin = dummy_f
            self.rope_strides = (0,) * 8
        self.normalize = normalize
        self.n_const = float(max(N, 1))
        self.scale = 1.0 if scale is None else float(scale)
        self.eps = float(eps)
        p = float(focus_power)
        p_int = int(p) if p.is_integer() and 1 <= p <= 16 else 0
        self.consts = dict(FMAP=_FMAP[feature_map], P=p, P_INT=p_int, FEPS=FOCUS_EPS, NORMALIZE=normalize,
                           ROPE=self.rope, HAS_MASK=self.has_mask, VARLEN=self.varlen,
                           IEEE=ieee, EMU=interpreting())
        self.seq_consts = dict(self.consts, HAS_NTAB=self.has_ntab, SCALE_INV_N=scale is None and not normalize,
                               EPS_N=norm == 'linfusion')

    def state_views(self, state):
        """(S [nseq * H * K * V], z [nseq * H * K]) of one fp32 state buffer (forward: S, z; backward: dS, dz)."""
        n = self.nseq * self.H * self.K * self.V
        return state[:n], state[n:]


def state_size(nseq, H, K, V):
    return nseq * H * (K * V + K)


# the forward's state is kept for the backward when it takes at most this share of q, k and v's bytes; above
# (few tokens a sequence: ViT-S at 224 px, 196 tokens, K = V = 64 in bf16: 22 %, 25 MB a block at batch 256)
# the backward recomputes it (F1 again: one more read of k and v) and the op saves nothing but its inputs
STATE_SAVE_MAX_SHARE = 1 / 16


def saves_state(nseq, tokens, H, K, V, itemsize):
    """Does the forward keep its fp32 state for the backward (else the backward recomputes it)?"""
    return state_size(nseq, H, K, V) * 4 <= STATE_SAVE_MAX_SHARE * tokens * H * (2 * K + V) * itemsize


@functools.lru_cache(maxsize=256)
def _cached_plan(q_shape, V, dtype, device, feature_map, normalize, scale, eps, focus_power, norm, cfg_items,
                 deterministic):
    like_q = SimpleNamespace(shape=q_shape, dtype=dtype, device=device)
    like_v = SimpleNamespace(shape=(V,))
    return _Plan(like_q, like_v, feature_map, normalize, scale, eps, focus_power, None, norm, None, None,
                 cfg=dict(cfg_items))


def plan(q, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens):
    """The launch plan of one call; plans without tensors of their own are cached (host overhead matters at
    small sizes)."""
    if rope is None and key_padding_mask is None and cu_seqlens is None:
        return _cached_plan(tuple(q.shape), v.shape[-1], q.dtype, q.device, feature_map, normalize, scale, eps,
                            focus_power, norm, tuple(sorted(launch_config().items())),
                            torch.are_deterministic_algorithms_enabled())
    return _Plan(q, v, feature_map, normalize, scale, eps, focus_power, rope, norm, key_padding_mask, cu_seqlens)


def fwd_state(k, v, P, state=None):
    """F1: the fp32 state buffer (S, z; see ``_Plan.state_views``) of k and v (zeros for an empty input), written
    into ``state`` (a zeroed buffer of ``state_size``) if given."""
    B, N, H, K, V = P.B, P.N, P.H, P.K, P.V
    if state is None:
        state = torch.zeros(state_size(P.nseq, H, K, V), dtype=torch.float32, device=k.device)
    S, z = P.state_views(state)
    nr, CHr, tabr = P.chunks['red']
    if nr:
        _launch(_fwd_state_kernel, (nr, B * H, P.NV),
                (k, v, S, z, P.mask, tabr, P.cos, P.sin, N, H, K, V, CHr, *k.stride(), *v.stride(), *P.smask,
                 *P.rope_strides), P.consts, P)
    return state


def forward(q, k, v, P):
    """F1 + F2: o [B, N, H, V] in v's dtype and the fp32 state buffer (S, z; see ``_Plan.state_views``)."""
    B, N, H, K, V = P.B, P.N, P.H, P.K, P.V
    state = fwd_state(k, v, P)
    S, z = P.state_views(state)
    o = alloc((B, N, H, V), v.dtype, v.device)
    nm, CHm, tabm = P.chunks['map']
    if P.chunks['red'][0] == 0:
        return o.zero_(), state
    _launch(_fwd_out_kernel, (nm, B * H, P.NV),
            (q, o, S, z, P.mask, tabm, P.ntab, P.cos, P.sin, N, H, K, V, CHm, P.n_const, P.scale, P.eps,
             *q.stride(), *o.stride(), *P.smask, *P.rope_strides), P.seq_consts, P)
    return o, state


def backward(q, k, v, do, state, P, out=None):
    """B1 + B2: dq, dk, dv (in the inputs' dtypes) from the forward's state buffer (None: recomputed, F1), written
    into ``out`` (three tensors of q's, k's and v's shapes, any strides: e.g. the slices of one packed qkv
    gradient) if given."""
    B, N, H, K, V = P.B, P.N, P.H, P.K, P.V
    if state is None:  # recomputed: the state and its gradient from one zeroed allocation
        state, dstate = torch.zeros(2, state_size(P.nseq, H, K, V), dtype=torch.float32, device=k.device).unbind(0)
        state = fwd_state(k, v, P, state)
    else:
        dstate = torch.zeros_like(state)
    S, z = P.state_views(state)
    dS, dz = P.state_views(dstate)
    dq, dk, dv = out if out is not None else (alloc(t.shape, t.dtype, t.device) for t in (q, k, v))
    nr, CHr, tabr = P.chunks['red']
    nm, CHm, tabm = P.chunks['map']
    if nr == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    args = (q, do, dq, S, z, dS, dz, P.mask, tabr, P.ntab, P.cos, P.sin, N, H, K, V, CHr, P.n_const, P.scale,
            P.eps, *q.stride(), *do.stride(), *dq.stride(), *P.smask, *P.rope_strides)
    if P.NV == 1:
        _launch(_bwd_q_kernel, (nr, B * H, 1), args, dict(P.seq_consts, DO_DS=True, DO_DQ=True, NV=1), P)
    else:
        _launch(_bwd_q_kernel, (nr, B * H, P.NV), args, dict(P.seq_consts, DO_DS=True, DO_DQ=False, NV=P.NV), P)
        _launch(_bwd_q_kernel, (nr, B * H, 1), args, dict(P.seq_consts, DO_DS=False, DO_DQ=True, NV=P.NV), P)
    _launch(_bwd_kv_kernel, (nm, B * H),
            (k, v, dk, dv, dS, dz, P.mask, tabm, P.cos, P.sin, N, H, K, V, CHm, *k.stride(), *v.stride(),
             *dk.stride(), *dv.stride(), *P.smask, *P.rope_strides), dict(P.consts, NV=P.NV), P)
    return dq, dk, dv
