"""Packed sequences: the per-sequence and per-chunk tables every kernel family builds from ``cu_seqlens``.

Kernels see the tokens of ``[B, N, ...]`` inputs as rows ``0 .. B*N-1``: sequence ``s`` is the row range
``[bos, eos)``, ``[s*N, (s+1)*N)`` for a dense batch, ``[cu[s], cu[s+1])`` for packed sequences (B == 1). The
device side of these tables is read by the helpers of ``jit.py`` (``seq_bounds``, ``seq_info``, ``chunk_info``).
"""
import functools
import itertools

import torch

from .options import cdiv, dummy


def segments(B, N, cu_seqlens):
    """``(batch index, first row, end row)`` of every independent sequence (the step references' walk)."""
    if cu_seqlens is None:
        return [(b, 0, N) for b in range(B)]
    cu = [int(x) for x in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


def per_sequence(fn, tensors, h0, B, N, cu_seqlens):
    """``fn(*tensors, h0) -> (o, final)`` on the dense batch (token dim 1), or, with ``cu_seqlens``, on each packed
    sequence's slice of the tokens with its own initial state row, outputs concatenated along the tokens and the
    final states along the sequences (the batched CPU paths' walk over packed sequences)."""
    if cu_seqlens is None:
        return fn(*tensors, h0)
    outs, finals = [], []
    for i, (_, bos, eos) in enumerate(segments(B, N, cu_seqlens)):
        o, f = fn(*(t[:, bos:eos] if t is not None else None for t in tensors), None if h0 is None else h0[i:i + 1])
        outs.append(o)
        finals.append(f)
    return torch.cat(outs, 1), torch.cat(finals)


def seq_positions(n, cu_seqlens, reverse=False):
    """For each of ``n`` packed tokens: its distance to the start (``reverse``: the end) of its sequence, int64 on
    ``cu_seqlens``' device (device ops only: no host read)."""
    t = torch.arange(n, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens.to(t.dtype), t, right=True) - 1
    return cu_seqlens[seg + 1].to(t.dtype) - 1 - t if reverse else t - cu_seqlens[seg].to(t.dtype)


def steps(bos, eos, reverse):
    """Token indices of one sequence in recurrence order."""
    return range(eos - 1, bos - 1, -1) if reverse else range(bos, eos)


class PackedSeqs:
    """The sequences of one call. ``cu`` is the int32 ``[S + 1]`` device copy of ``cu_seqlens`` (a dummy
    without it); host-side boundaries (``bounds``) are read from the device once, on first use."""

    def __init__(self, B, N, cu_seqlens, device):
        self.B, self.N, self.device = B, N, device
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.nseq = cu_seqlens.numel() - 1
            self.cu = cu_seqlens.to(device=device, dtype=torch.int32)
        else:
            self.nseq = B
            self.cu = dummy(device, torch.int32)
        self._bounds = None

    @property
    def bounds(self):
        """Row offsets ``[S + 1]`` as a host list (dense: ``0, N, 2N, ...``)."""
        if self._bounds is None:
            self._bounds = [int(x) for x in self.cu.tolist()] if self.varlen else \
                [s * self.N for s in range(self.B + 1)]
        return self._bounds

    def lengths(self, dtype):
        """Tokens per sequence, ``[S]`` on the device."""
        if self.varlen:
            return (self.cu[1:] - self.cu[:-1]).to(dtype)
        return torch.full((self.B,), self.N, dtype=dtype, device=self.device)

    def longest(self):
        b = self.bounds
        return max((e - a for a, e in zip(b[:-1], b[1:])), default=0)

    def spans(self, length):
        """Work items ``(sequence, first row, end row)`` of at most ``length`` tokens each, in row order."""
        b = self.bounds
        return [(s, a, min(a + length, b[s + 1])) for s in range(self.nseq) for a in range(b[s], b[s + 1], length)]

    def chunks(self, C, H):
        return ChunkTable(self, C, H)


@functools.lru_cache(maxsize=64)
def _dense_last_chunks(B, NT, device):
    """``ChunkTable.last_chunk`` / ``last_seq`` of a dense batch (cached: read-only, no device ops per call)."""
    return torch.arange(NT - 1, B * NT, NT, device=device), torch.arange(B, device=device)


class ChunkTable:
    """Chunks of ``C`` tokens of every sequence (the last one of a sequence may be shorter).

    Grid of the chunk-parallel kernels: ``(nchunks, nbh)`` = ``(NT, B*H)`` dense, ``(total_chunks, H)`` packed.
    Packed tables (int32): ``chunk_seq`` / ``chunk_idx`` (sequence and index in it of each chunk), ``chunk_off``
    (first chunk of each sequence); dense calls compute these from the program ids (``NT`` chunks per sequence).
    ``max_chunks``: the most chunks of one sequence. ``last_chunk`` / ``last_seq`` (int64, dense and packed):
    the last chunk row of every sequence that has one, and that sequence, for host-sync-free index ops (no
    boolean masks).
    """

    def __init__(self, seqs: PackedSeqs, C, H):
        self.seqs, self.C, self.H, self.N = seqs, C, H, seqs.N
        self.varlen, self.nseq, self.cu = seqs.varlen, seqs.nseq, seqs.cu
        if not self.varlen:
            self.NT = cdiv(self.N, C)
            self.max_chunks = self.NT
            self.nchunks = self.NT
            self.total_chunks = seqs.B * self.NT
            self.nbh = seqs.B * H
            self.chunk_seq = self.chunk_idx = self.chunk_off = seqs.cu
            self.last_chunk, self.last_seq = _dense_last_chunks(seqs.B, self.NT, seqs.device)
            return
        b = seqs.bounds
        nts = [cdiv(e - a, C) for a, e in zip(b[:-1], b[1:])]
        seq = [s for s, nt in enumerate(nts) for _ in range(nt)]
        idx = [i for nt in nts for i in range(nt)]
        off = [0, *itertools.accumulate(nts)][:-1]
        self.NT = 0
        self.max_chunks = max(nts, default=0)
        self.total_chunks = self.nchunks = len(seq)
        self.nbh = H
        lseq = [s for s, nt in enumerate(nts) if nt]
        last = [off[s] + nts[s] - 1 for s in lseq]
        tab = torch.tensor(seq + idx + off + last + lseq, dtype=torch.int64).to(seqs.device)  # one host -> device copy
        n, S, L = len(seq), len(off), len(lseq)
        self.chunk_seq, self.chunk_idx, self.chunk_off = (tab[:n].int(), tab[n:2 * n].int(),
                                                          tab[2 * n:2 * n + S].int())
        self.last_chunk, self.last_seq = tab[2 * n + S:2 * n + S + L], tab[2 * n + S + L:]

