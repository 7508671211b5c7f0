"""Dense flash attention over one rectangle of query rows and keys (Triton).

A plan's dense rectangles (rows that attend one contiguous key range in full:
DynamicViT's kept-token clique) need no tile list and no mask: every program takes BM
query rows of one (batch, head) and walks the keys [0, n_keys) in BN-wide tiles with the
online softmax of ``block_sparse_attn`` (its ``softmax_step``: base-2 exponentials, fp32
statistics)::

    m'  = max(m, rowmax(q k^T) * c)        c = scale * log2(e)
    p   = exp2(q k^T * c - m')
    l   = l * exp2(m - m') + rowsum(p)
    acc = acc * exp2(m - m') + p v          O = acc / l

Only the last key tile, when n_keys is not a multiple of BN, masks the columns past the
end (the copy engine zero-fills them, and a zero key would still score 0, not -inf).
Q, K and V arrive as (B, H, rows, D) tensor descriptors, so tiles move by bulk copies.
Output rows go to ``row0 + r``, or with SCATTER to ``out_rows[r]`` (the gathered form
writes the caller's token order directly, without a scatter pass).

Against cuDNN on the same rectangle (H200, bf16, 12 heads, d = 64, 5,621 x 5,621 tokens):
64x128 tiles, 4 warps, 3 stages ran 217 µs against cuDNN's 230
(``ops.choose_dense_kernel`` times the candidates on a plan's largest rectangle and
keeps the faster).
"""

from __future__ import annotations

import triton
import triton.language as tl

from sparsevit.kernels.block_sparse_attn import softmax_step


@triton.jit
def _key_tile(q, K, V, b, h, start, n_keys, m_i, l_i, acc, qk_scale, BN: tl.constexpr,
              HEAD_DIM: tl.constexpr, BOUND: tl.constexpr):
    """One online-softmax update with keys [start, start + BN); BOUND masks keys past
    ``n_keys``."""
    k = K.load([b, h, start, 0]).reshape(BN, HEAD_DIM)
    s = tl.dot(q, tl.trans(k))
    if BOUND:
        s = tl.where((start + tl.arange(0, BN) < n_keys)[None, :], s, float("-inf"))
    v = V.load([b, h, start, 0]).reshape(BN, HEAD_DIM)
    return softmax_step(s, v, m_i, l_i, acc, qk_scale)


@triton.jit
def dense_attn_fwd(Q, K, V, Out, out_rows, row0, n_rows, n_keys, n_heads, qk_scale,
                   stride_ob, stride_oh, stride_on,
                   BM: tl.constexpr, BN: tl.constexpr, HEAD_DIM: tl.constexpr,
                   SCATTER: tl.constexpr, STAGES: tl.constexpr):
    """Grid (query blocks, batch * heads). n_keys >= 1, so every row has l > 0."""
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    q = Q.load([b, h, qb * BM, 0]).reshape(BM, HEAD_DIM)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, HEAD_DIM], tl.float32)
    n_whole = n_keys // BN * BN
    for start in tl.range(0, n_whole, BN, num_stages=STAGES):
        m_i, l_i, acc = _key_tile(q, K, V, b, h, start, n_keys, m_i, l_i, acc, qk_scale,
                                  BN=BN, HEAD_DIM=HEAD_DIM, BOUND=False)
    if n_whole < n_keys:
        m_i, l_i, acc = _key_tile(q, K, V, b, h, n_whole, n_keys, m_i, l_i, acc, qk_scale,
                                  BN=BN, HEAD_DIM=HEAD_DIM, BOUND=True)
    rows = qb * BM + tl.arange(0, BM)
    valid = rows < n_rows
    if SCATTER:
        mem_rows = tl.load(out_rows + rows, mask=valid, other=0).to(tl.int64)
    else:
        mem_rows = (row0 + rows).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptrs = (Out + b.to(tl.int64) * stride_ob + h * stride_oh + mem_rows[:, None] * stride_on
              + offs_d[None, :])
    tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=valid[:, None])
