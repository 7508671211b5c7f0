"""Block-sparse flash attention over a precomputed tile list (Triton).

Math, per query row i of a query block and the set K(i) of keys it attends to::

    O[i] = sum_{j in K(i)} softmax_j(q_i . k_j * scale) v_j

computed flash-attention style: the program walks the tiles of its query block, and for
each BN-wide key tile updates a running row maximum m, running denominator l and
unnormalised accumulator acc (all in fp32, exponentials in base 2)::

    s     = (q k^T) * scale * log2(e)        masked to -inf outside K(i) (partial tiles)
    m'    = max(m, rowmax(s))
    p     = exp2(s - m')
    l     = l * exp2(m - m') + rowsum(p)
    acc   = acc * exp2(m - m') + p v
    O     = acc / l                          (0 where l == 0: a row with no keys)

Full tiles come first in each query block's tile range and run with no mask work at
all; column tiles (every row attends the same keys of the tile) read one row of their
packed bitmask; partial tiles AND their scores with the whole bitmask (bit b of word w
of a tile row is key column 32*w + b), never with per-element index arithmetic on
token ids.

Work units: a unit is one (item, batch*head) pair; an item is a query block and a
contiguous range of its tiles. A heavy query block (a global token's row attends to
every key) is cut into several items that write (acc, m, l) to a workspace, and a
second kernel merges them:  m = max_c m_c,  O = sum_c acc_c 2^(m_c-m) / sum_c l_c 2^(m_c-m).
By default a program runs one unit, launched in the plan's order (longest first, all
heads of an item adjacent). With a schedule (T4), a fixed number of persistent programs
each run their own list of units, so the schedule, not the hardware dispatcher, decides
which work shares a program.

With GATHER, logical row r lives at memory row ``row_map[r]``: q, k, v and o stay in the
caller's token order and the reordering costs no extra pass over memory. A padding
position maps to ``n_mem`` (one past the last memory row) and is never loaded or stored.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _rows(row_map, rows, n_pos, n_mem, GATHER: tl.constexpr):
    """(memory rows, valid) of logical (reordered, padded) rows; through ``row_map`` when
    gathering. Rows past ``n_pos`` and padding positions are not valid."""
    if GATHER:
        mem_rows = tl.load(row_map + rows, mask=rows < n_pos, other=n_mem).to(tl.int64)
    else:
        mem_rows = rows.to(tl.int64)
    return mem_rows, mem_rows < n_mem


@triton.jit
def _program_ids(n_bh, n_heads):
    """(work unit, batch*head, batch, head) of this program: all heads of a unit adjacent."""
    pid = tl.program_id(0)
    bh = pid % n_bh
    return pid // n_bh, bh, bh // n_heads, bh % n_heads


@triton.jit
def _row_ptrs(base, b, h, rows, stride_b, stride_h, stride_n, offs_d):
    """Pointers to the (rows, head_dim) block of batch ``b``, head ``h``."""
    head = base + b.to(tl.int64) * stride_b + h * stride_h
    return head + rows[:, None] * stride_n + offs_d[None, :]


@triton.jit
def _tile_step(q, k_base, v_base, stride_kn, stride_vn, kv_rows, row_map, n_pos, n_mem,
               m_i, l_i, acc, keep, qk_scale, GATHER: tl.constexpr, APPLY_MASK: tl.constexpr):
    """One online-softmax update with the key/value tile of logical rows ``kv_rows``."""
    mem_rows, in_bounds = _rows(row_map, kv_rows, n_pos, n_mem, GATHER)
    k_ptrs = k_base + mem_rows[None, :] * stride_kn
    v_ptrs = v_base + mem_rows[:, None] * stride_vn
    k = tl.load(k_ptrs, mask=in_bounds[None, :], other=0.0)
    v = tl.load(v_ptrs, mask=in_bounds[:, None], other=0.0)
    s = tl.dot(q, k) * qk_scale
    if APPLY_MASK:
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no key yet keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _bitmask(bitmasks, mid, offs_m, offs_n, NW: tl.constexpr):
    """Expand a partial tile's packed bits to a (BM, BN) boolean keep-mask."""
    base = bitmasks + mid.to(tl.int64) * (offs_m.shape[0] * NW) + offs_m * NW
    word = tl.load(base)
    # Pick word (column // 32) for every column; NW is 1, 2 or 4, unrolled at compile time.
    words = tl.broadcast_to(word[:, None], (offs_m.shape[0], offs_n.shape[0]))
    for w in tl.static_range(1, NW):
        word_w = tl.load(base + w)
        words = tl.where((offs_n // 32 == w)[None, :], word_w[:, None], words)
    return ((words >> (offs_n % 32)[None, :]) & 1) != 0


@triton.jit
def _column_mask(bitmasks, mid, offs_n, BM: tl.constexpr, NW: tl.constexpr):
    """A column tile's (1, BN) keep-mask: row 0 of its bitmask (all rows are alike)."""
    base = bitmasks + mid.to(tl.int64) * (BM * NW)
    words = tl.zeros(offs_n.shape, tl.int32) + tl.load(base)
    for w in tl.static_range(1, NW):
        words = tl.where(offs_n // 32 == w, tl.load(base + w), words)
    return (((words >> (offs_n % 32)) & 1) != 0)[None, :]


@triton.jit
def _attend_unit(
    item, bh, Q, K, V, Out, WS_ACC, WS_M, WS_L, row_map,
    item_qb, item_t0, item_tmid, item_tcol, item_t1, item_slot,
    col_block, mask_id, bitmasks,
    n_pos, n_mem, n_heads, n_bh, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BM: tl.constexpr, BN: tl.constexpr, HEAD_DIM: tl.constexpr, NW: tl.constexpr,
    GATHER: tl.constexpr,
):
    """One work unit: the tiles [t0, t1) of one item for one (batch, head)."""
    b = bh // n_heads
    h = bh % n_heads
    qb = tl.load(item_qb + item)
    t0 = tl.load(item_t0 + item)
    tmid = tl.load(item_tmid + item)
    tcol = tl.load(item_tcol + item)
    t1 = tl.load(item_t1 + item)
    slot = tl.load(item_slot + item)

    offs_m = qb * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows, row_ok = _rows(row_map, offs_m, n_pos, n_mem, GATHER)
    q_ptrs = _row_ptrs(Q, b, h, q_rows, stride_qb, stride_qh, stride_qn, offs_d)
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_d[:, None]
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_d[None, :]

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, HEAD_DIM], tl.float32)

    # Full tiles: no mask work.
    for t in range(t0, tmid):
        kv_rows = tl.load(col_block + t) * BN + offs_n
        m_i, l_i, acc = _tile_step(
            q, k_base, v_base, stride_kn, stride_vn, kv_rows, row_map, n_pos, n_mem,
            m_i, l_i, acc, True, qk_scale, GATHER=GATHER, APPLY_MASK=False)
    # Column tiles: one row of mask bits serves every row.
    for t in range(tmid, tcol):
        kv_rows = tl.load(col_block + t) * BN + offs_n
        keep = _column_mask(bitmasks, tl.load(mask_id + t), offs_n, BM, NW)
        m_i, l_i, acc = _tile_step(
            q, k_base, v_base, stride_kn, stride_vn, kv_rows, row_map, n_pos, n_mem,
            m_i, l_i, acc, keep, qk_scale, GATHER=GATHER, APPLY_MASK=True)
    # Partial tiles: scores outside the bitmask become -inf.
    for t in range(tcol, t1):
        kv_rows = tl.load(col_block + t) * BN + offs_n
        keep = _bitmask(bitmasks, tl.load(mask_id + t), tl.arange(0, BM), offs_n, NW)
        m_i, l_i, acc = _tile_step(
            q, k_base, v_base, stride_kn, stride_vn, kv_rows, row_map, n_pos, n_mem,
            m_i, l_i, acc, keep, qk_scale, GATHER=GATHER, APPLY_MASK=True)

    if slot < 0:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = _row_ptrs(Out, b, h, q_rows, stride_ob, stride_oh, stride_on, offs_d)
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        ws = (slot.to(tl.int64) * n_bh + bh) * BM + tl.arange(0, BM)
        tl.store(WS_ACC + ws[:, None] * HEAD_DIM + offs_d[None, :], acc)
        tl.store(WS_M + ws, m_i)
        tl.store(WS_L + ws, l_i)


@triton.jit
def block_sparse_attn_fwd(
    Q, K, V, Out, WS_ACC, WS_M, WS_L, row_map,
    item_qb, item_t0, item_tmid, item_tcol, item_t1, item_slot,
    col_block, mask_id, bitmasks, prog_ptr, prog_units,
    n_pos, n_mem, n_heads, n_bh, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BM: tl.constexpr, BN: tl.constexpr, HEAD_DIM: tl.constexpr, NW: tl.constexpr,
    GATHER: tl.constexpr, PERSISTENT: tl.constexpr,
):
    """Grid launch: program = (item, batch*head), all heads of an item adjacent.
    PERSISTENT: program p runs the units prog_units[prog_ptr[p]:prog_ptr[p+1]] in order,
    unit u = item * n_bh + bh (the schedule's placement of work on the GPU)."""
    pid = tl.program_id(0)
    if PERSISTENT:
        u0 = tl.load(prog_ptr + pid)
        u1 = tl.load(prog_ptr + pid + 1)
    else:
        u0 = pid
        u1 = pid + 1
    for u in range(u0, u1):
        unit = u
        if PERSISTENT:
            unit = tl.load(prog_units + u)
        _attend_unit(
            unit // n_bh, unit % n_bh, Q, K, V, Out, WS_ACC, WS_M, WS_L, row_map,
            item_qb, item_t0, item_tmid, item_tcol, item_t1, item_slot, col_block, mask_id,
            bitmasks, n_pos, n_mem, n_heads, n_bh, qk_scale,
            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
            stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
            BM, BN, HEAD_DIM, NW, GATHER)


@triton.jit
def split_combine(
    Out, WS_ACC, WS_M, WS_L, row_map, split_qb, split_s0, split_s1,
    n_pos, n_mem, n_heads, n_bh, stride_ob, stride_oh, stride_on,
    BM: tl.constexpr, HEAD_DIM: tl.constexpr, GATHER: tl.constexpr,
):
    """Merge the partial (acc, m, l) of a heavy query block's items into O."""
    j, bh, b, h = _program_ids(n_bh, n_heads)
    qb = tl.load(split_qb + j)
    s0 = tl.load(split_s0 + j)
    s1 = tl.load(split_s1 + j)
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BM], float("-inf"), tl.float32)
    for s in range(s0, s1):
        m = tl.maximum(m, tl.load(WS_M + (s * n_bh + bh) * BM + rows))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, HEAD_DIM], tl.float32)
    for s in range(s0, s1):
        ws = (s * n_bh + bh) * BM + rows
        scale = tl.math.exp2(tl.load(WS_M + ws) - m_safe)
        l_sum += tl.load(WS_L + ws) * scale
        acc += tl.load(WS_ACC + ws[:, None] * HEAD_DIM + offs_d[None, :]) * scale[:, None]
    out = acc / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
    offs_m = qb * BM + rows
    o_rows, o_ok = _rows(row_map, offs_m, n_pos, n_mem, GATHER)
    o_ptrs = _row_ptrs(Out, b, h, o_rows, stride_ob, stride_oh, stride_on, offs_d)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_ok[:, None])
