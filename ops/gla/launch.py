"""Host-side launch helpers of the gated linear attention kernels: chunk sizes, operand precision, launch
options (defaults here, overrides through ``kernel_options(launch=...)``; names in docs/ops.md)."""
from ..common.options import TRITON_LAUNCH_KEYS, current_options, declare_launch, interpreting, next_power_of_2

CHUNK = 64
SUB = 16
declare_launch(TRITON_LAUNCH_KEYS, 'fwd_A', 'dvA', 'fwd_o', 'dv', 'dq', 'dk', 'dqk')
# intra: load_m reads the vector-gate diagonal sub-block's dA columns from memory instead of cutting each out of the
# register tile; default with the bonus (RWKV6 fwd+bwd -5 / -7 %), not without (GLA +1.5 %): H100, session 18
declare_launch(TRITON_LAUNCH_KEYS + ('load_m',), 'intra')
# with one gate per head or none (no bonus), full-chunk products (one exp matrix of decays) instead of the
# sub-block kernels written for vector gates: fwd_oA's fuse_a forms the scores A inside _fwd_oA_kernel (no
# _fwd_A_kernel), dA's fuse_intra the strict-pair dq / dk inside _bwd_dA_kernel (no _bwd_intra_kernel); on since
# timed (H100, session 18: simple GLA forward -15 / -18 %, forward + backward -11 / -12 %)
# fwd_oA's recompute_a (with fuse_a): the forward does not write the fp32 scores A ([B, N, H, 64], twice o's bytes
# at bf16); the backward's dv kernel forms them again from q and k, as fla's backward does; default where dv has one
# value block (V <= 64: timed there, forward -6 to -8 %, H100, session 19; each further block would form A again)
declare_launch(TRITON_LAUNCH_KEYS + ('fuse_a', 'recompute_a'), 'fwd_oA')
declare_launch(TRITON_LAUNCH_KEYS + ('fuse_intra',), 'dA')
# inter's fuse_da (with fuse_intra): _bwd_inter_kernel forms dA and the strict-pair dq / dk itself from the do / v
# tiles it loads anyway: no _bwd_dA_kernel, and no fp32 dA / dqi / dki written and read back (H100, session 20:
# fwd+bwd -20 % simple GLA, -24 % RetNet, -29 % gla_none at B8 H12 N4096 D64, bf16)
declare_launch(TRITON_LAUNCH_KEYS + ('fuse_da',), 'inter')
FUSE_A = True
FUSE_INTRA = True
RECOMPUTE_A = True
RECOMPUTE_A_MAX_V = 64
FUSE_DA = True


def _gate_kind(gk):
    """GK of the kernels: 0 no key gate, 1 one gate per head ([B, N, H]), 2 one per key ([B, N, H, K])."""
    return 0 if gk is None else (1 if gk.dim() == 3 else 2)


def _one_gate(GK, u):
    """Whether the full-chunk products with one matrix of decays apply: one gate per head or none, no bonus."""
    return GK < 2 and u is None


def _or(t, dummy):
    return t if t is not None else dummy


def _lowp(ieee):
    # Triton's CPU interpreter (3.8) computes bf16 tl.dot wrongly: there, dots run in fp32
    return (not ieee) and not interpreting()


def _prec(ieee):
    """IEEE code of the kernels: 1 for fp32 inputs; for 16-bit inputs, where a kernel takes fp32 operands,
    0 (tf32) or 2 (3xtf32) after the option ``gla_f32_operands``."""
    return 1 if ieee else (2 if current_options().gla_f32_operands == 'tf32x3' else 0)


def _pow2(x, lo=16):
    return max(lo, next_power_of_2(x))


def _launch_opts(K, *names):
    """Launch options of a kernel; ``kernel_options(launch=...)`` entries of ``names`` override in order ('dqk'
    applies to both the dq and the dk kernel, 'dq' / 'dk' to one)."""
    opts = dict(num_warps=4) if K <= 64 else dict(num_warps=8)
    # measured defaults (H100 timings and sm_90a ptxas spill checks: docs/benchmarks/recurrent_gla.md)
    if 'fwd_A' in names and K <= 64:
        opts['num_warps'] = 2
    if 'fwd_o' in names:
        opts['num_stages'] = 1
    if any(n in names for n in ('fwd_oA', 'dA', 'dvA', 'inter')):
        # full-chunk kernels: their K / V loops run once at K = V <= 64, so stages only cost shared memory
        opts['num_stages'] = 1
    opts.update(current_options().launch_for(*names))
    return opts
