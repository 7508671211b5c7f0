"""Block-sparse flash attention over a precomputed tile list (Triton).

Math, per query row i of a query block and the set K(i) of keys it attends to::

    O[i] = sum_{j in K(i)} softmax_j(q_i . k_j * scale) v_j

computed flash-attention style: the program walks the tiles of its query block, and for
each BN-wide key tile updates a running row maximum m, running denominator l and
unnormalised accumulator acc (all in fp32, exponentials in base 2)::

    s     = q k^T                            masked to -inf outside K(i) (partial tiles)
    m'    = max(m, rowmax(s) * c)            c = scale * log2(e) > 0, so max commutes with it
    p     = exp2(s * c - m')                 one fused multiply-add per score
    l     = l * exp2(m - m') + rowsum(p)
    acc   = acc * exp2(m - m') + p v
    O     = acc / l                          (0 where l == 0: a row with no keys)

Full tiles come first in each query block's tile range and run with no mask work at
all; column tiles (every row attends the same keys of the tile) read one row of their
packed bitmask; partial tiles test every score against the whole bitmask, never with
per-element index arithmetic on token ids. On the device a tile row's BN bits sit in NW
words interleaved: key column c is bit c // NW of word c % NW (``kernel_bitmasks``). A
thread of the MMA layout holds columns of one parity pattern, so its word choice folds at
compile time and each score costs one AND-to-predicate and one select (inline PTX: left
to LLVM, the boolean tile is packed into bit-vectors and unpacked again, ~2.5x the work).

Work units: a unit is one (item, batch*head) pair; an item is a query block and a
contiguous range of its tiles. A heavy query block (a global token's row attends to
every key) is cut into several items (pieces) that write (acc, m, l) to a workspace;
the piece that finishes last merges them:  m = max_c m_c,
O = sum_c acc_c 2^(m_c-m) / sum_c l_c 2^(m_c-m). Each piece takes a ticket from its
block's counter after its workspace stores (a CTA barrier, then one acquire-release
atomic: the split-K semaphore pattern); the one holding the last ticket reads the
others' pieces from L2 and resets the counter for the next call. No piece waits, so
any launch order or schedule is deadlock-free, and no second kernel is launched.
A query block's lead tile, a column tile whose rows all attend one key (a global token's
column: one useful key in a BN-wide tile), is in no item's range: the block's first item
starts its softmax from that key (``_lead_key``).
By default a program runs one unit, launched in the plan's order (longest first, all
heads of an item adjacent). With a schedule (T4), a fixed number of persistent programs
each run their own list of units, so the schedule, not the hardware dispatcher, decides
which work shares a program.

With TMA (ordered inputs), Q, K and V arrive as (B, H, N, D) tensor descriptors and
every tile moves by a bulk tensor copy: no per-row address or bounds arithmetic in the
loop, and the copy engine zero-fills rows past N. (Descriptors made on the device per
program cost more than they save: RegionViT 16k went 46 -> 62 µs in a one-off H200 run.)

With GATHER, logical row r lives at memory row ``row_map[r]``: q, k, v and o stay in the
caller's token order and the reordering costs no extra pass over memory. A padding
position maps to ``n_mem`` (one past the last memory row) and is never loaded or stored.
With GATHER and TMA, every block's tokens sit in consecutive memory rows with padding
only after them (``layout.block_memory_rows``: a model keeping a padded plan's unpadded
order): a tile moves by one bulk copy from its first memory row, and the rows it reads
at padding positions (the next tokens) are masked columns or rows that are not stored.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# Bit-compaction steps (shift, mask) gathering every 2nd / every 4th bit of a 64-bit word
# into its low 32 / 16 bits: no per-bit temporaries on plans with millions of tiles.
_EVERY_2ND = (0x5555555555555555, ((1, 0x3333333333333333), (2, 0x0F0F0F0F0F0F0F0F),
                                   (4, 0x00FF00FF00FF00FF), (8, 0x0000FFFF0000FFFF),
                                   (16, 0x00000000FFFFFFFF)))
_EVERY_4TH = (0x1111111111111111, ((3, 0x0303030303030303), (6, 0x000F000F000F000F),
                                   (12, 0x000000FF000000FF), (24, 0x000000000000FFFF)))


_ROWS_PER_PASS = 1 << 15


def _compact(x: np.ndarray, steps: tuple) -> np.ndarray:
    first, rest = steps
    x = x & np.uint64(first)
    for shift, mask in rest:
        x |= x >> np.uint64(shift)
        x &= np.uint64(mask)
    return x


def kernel_bitmasks(bitmasks: np.ndarray) -> np.ndarray:
    """TileSet bitmasks (m, BM, NW) int32, column 32*w + b at bit b of word w, in the
    kernel's interleaved layout (column c at bit c // NW of word c % NW), flattened."""
    m, bm, nw = bitmasks.shape
    if nw == 1 or m == 0:
        return bitmasks.reshape(-1)
    rows = np.ascontiguousarray(bitmasks).view(np.uint64).reshape(m * bm, nw // 2)
    out = np.empty((m * bm, nw), np.uint32)
    # Rows in cache-sized chunks: a dense graph's bitmasks reach GBs, and whole-array
    # temporaries would each cost a pass over fresh memory.
    for r0 in range(0, m * bm, _ROWS_PER_PASS):
        chunk, dst = rows[r0:r0 + _ROWS_PER_PASS], out[r0:r0 + _ROWS_PER_PASS]
        for w in range(nw):
            if nw == 2:
                dst[:, w] = _compact(chunk[:, 0] >> np.uint64(w), _EVERY_2ND)
            else:  # nw == 4: columns 0..63 in the low uint64, 64..127 in the high one
                low = _compact(chunk[:, 0] >> np.uint64(w), _EVERY_4TH)
                dst[:, w] = low | (_compact(chunk[:, 1] >> np.uint64(w), _EVERY_4TH)
                                   << np.uint64(16))
    return out.view(np.int32).reshape(-1)


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
def _row_ptrs(base, b, h, rows, stride_b, stride_h, stride_n, offs_d):
    """Pointers to the (rows, head_dim) block of batch ``b``, head ``h``."""
    head = base + b.to(tl.int64) * stride_b + h * stride_h
    return head + rows[:, None] * stride_n + offs_d[None, :]


@triton.jit
def _masked(s, words, bitsel, INLINE_PTX: tl.constexpr):
    """``s`` where ``words & bitsel`` is non-zero, else -inf."""
    if INLINE_PTX:
        return tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b32 t; and.b32 t, $2, $3; setp.ne.b32 p, t, 0; "
            "selp.f32 $0, $1, 0fFF800000, p; }",
            "=r,r,r,r", [s, words, bitsel], dtype=tl.float32, is_pure=True, pack=1)
    else:  # the CPU interpreter runs no PTX
        return tl.where((words & bitsel) != 0, s, float("-inf"))


@triton.jit
def _tile_step(q, k_src, v_src, b, h, stride_kn, stride_vn, kv0, row_map, n_pos, n_mem,
               m_i, l_i, acc, words, qk_scale, BN: tl.constexpr, GATHER: tl.constexpr,
               APPLY_MASK: tl.constexpr, NW: tl.constexpr, INLINE_PTX: tl.constexpr,
               TMA: tl.constexpr):
    """One online-softmax update with the key/value tile of logical rows [kv0, kv0 + BN);
    ``words``: the tile's mask words per score (partial and column tiles). ``k_src`` and
    ``v_src`` are (B, H, N, D) tensor descriptors (TMA) or the (batch, head)'s row-0
    pointers."""
    if TMA:  # bulk tensor copies: no address arithmetic, rows past the end read as zeros
        k = k_src.load([b, h, kv0, 0]).reshape(BN, q.shape[1])
        v = v_src.load([b, h, kv0, 0]).reshape(BN, q.shape[1])
    else:
        mem_rows, in_bounds = _rows(row_map, kv0 + tl.arange(0, BN), n_pos, n_mem, GATHER)
        k = tl.load(k_src + mem_rows[:, None] * stride_kn, mask=in_bounds[:, None], other=0.0)
        v = tl.load(v_src + mem_rows[:, None] * stride_vn, mask=in_bounds[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k))
    if APPLY_MASK:
        bitsel = 1 << (tl.arange(0, BN) // NW)
        s = _masked(s, words, bitsel[None, :], INLINE_PTX)
    return softmax_step(s, v, m_i, l_i, acc, qk_scale)


@triton.jit
def softmax_step(s, v, m_i, l_i, acc, qk_scale):
    """The online-softmax update (m, l, acc) with one tile's raw scores ``s`` (-inf where
    masked) and values ``v``."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    # A row that has seen no key yet keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * qk_scale - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _lead_key(q, K, V, b, h, key, row_map, stride_kb, stride_kh, stride_kn, stride_vb,
              stride_vh, stride_vn, qk_scale, GATHER: tl.constexpr):
    """The online softmax's start (m, l, acc): after the one key every row of the block
    attends in its lead tile (a global token's column) m = q.k * c, l = 1, acc = v; with
    no lead key (key < 0) m = -inf, l = 0, acc = 0. Dot products on the CUDA cores once
    per program instead of a BN-wide tile through the loop for one key. Selects, not a
    branch: ptxas serializes every wgmma of a kernel whose accumulator has a second
    definition (C7515), as a branch's join gives it."""
    has = key >= 0
    key = tl.maximum(key, 0)
    if GATHER:
        key = tl.load(row_map + key)
    offs_d = tl.arange(0, q.shape[1])
    k = tl.load(K + b.to(tl.int64) * stride_kb + h * stride_kh + key.to(tl.int64) * stride_kn
                + offs_d, mask=has & (offs_d >= 0), other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + h * stride_vh + key.to(tl.int64) * stride_vn
                + offs_d, mask=has & (offs_d >= 0), other=0.0)
    s = tl.sum(q.to(tl.float32) * k.to(tl.float32)[None, :], 1) * qk_scale
    m = tl.where(has, s, float("-inf"))
    l_start = tl.where(has, tl.full(m.shape, 1.0, tl.float32), 0.0)
    acc = tl.broadcast_to(v.to(tl.float32)[None, :], (q.shape[0], q.shape[1]))
    return m, l_start, acc


@triton.jit
def _bitmask(bitmasks, mid, offs_m, offs_n, NW: tl.constexpr):
    """A tile's (BM, BN) mask words: score (i, c) tests word c % NW of row i. A full
    tile (mask id -1) reads as all ones."""
    base = bitmasks + mid.to(tl.int64) * (offs_m.shape[0] * NW) + offs_m * NW
    has = (mid >= 0) & (offs_m >= 0)
    words = tl.load(base, mask=has, other=-1)
    words = tl.broadcast_to(words[:, None], (offs_m.shape[0], offs_n.shape[0]))
    for w in tl.static_range(1, NW):  # NW is 1, 2 or 4: unrolled at compile time
        word_w = tl.load(base + w, mask=has, other=-1)
        words = tl.where((offs_n % NW == w)[None, :], word_w[:, None], words)
    return words


@triton.jit
def _column_mask(bitmasks, mid, offs_n, BM: tl.constexpr, NW: tl.constexpr):
    """A column tile's (1, BN) mask words: row 0 of its bitmask (all rows are alike)."""
    base = bitmasks + mid.to(tl.int64) * (BM * NW)
    words = tl.zeros(offs_n.shape, tl.int32) + tl.load(base)
    for w in tl.static_range(1, NW):
        words = tl.where(offs_n % NW == w, tl.load(base + w), words)
    return words[None, :]


@triton.jit
def _store_out(Out, acc, l_i, b, h, q_rows, row_ok, stride_ob, stride_oh, stride_on, offs_d):
    """O = acc / l for the block's rows (0 where l == 0: a row with no keys). A plain
    store even with TMA: a bulk store would stage the tile in 8 KB more shared memory,
    one program fewer per SM."""
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = _row_ptrs(Out, b, h, q_rows, stride_ob, stride_oh, stride_on, offs_d)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _merge_pieces(WS, ws_rows, s0, s1, bh, n_bh, BM: tl.constexpr, HEAD_DIM: tl.constexpr):
    """(acc, l) of a split query block from its pieces' (acc, m, l) in workspace slots
    [s0, s1), merged online like tiles. Loads bypass L1 (.cg): other SMs wrote them."""
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BM], float("-inf"), tl.float32)
    l_sum = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, HEAD_DIM], tl.float32)
    for c in tl.range(s0, s1, num_stages=1):  # no shared-memory pipeline buffers
        ws = (c * n_bh + bh).to(tl.int64) * BM + rows
        m_c = tl.load(WS + ws_rows * HEAD_DIM + ws, cache_modifier=".cg")
        l_c = tl.load(WS + ws_rows * (HEAD_DIM + 1) + ws, cache_modifier=".cg")
        acc_c = tl.load(WS + ws[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=(l_c > 0.0)[:, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, m_c)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_safe)
        beta = tl.math.exp2(m_c - m_safe)
        l_sum = l_sum * alpha + l_c * beta
        acc = acc * alpha[:, None] + acc_c * beta[:, None]
        m = m_new
    return acc, l_sum


@triton.jit
def _attend_unit(
    item, bh, Q, K, V, K_rows, V_rows, Out, WS, ws_rows, row_map, query_rows, items, tiles,
    bitmasks, splits, tickets, n_pos, n_mem, n_heads, n_bh, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BM: tl.constexpr, BN: tl.constexpr, HEAD_DIM: tl.constexpr, NW: tl.constexpr,
    GATHER: tl.constexpr, INLINE_PTX: tl.constexpr, ONE_LOOP: tl.constexpr, TMA: tl.constexpr,
    SPLITS: tl.constexpr,
):
    """One work unit: the tiles [t0, t1) of one item for one (batch, head).

    ``items`` rows are (query block, t0, tmid, tcol, t1, workspace slot, lead key, split
    block); ``tiles`` rows are (key tile's first row, mask id): its first position, or
    with TMA and GATHER its first memory row; ``query_rows`` the query blocks' first
    memory rows (TMA and GATHER only); ``splits`` rows (first slot, end slot);
    ``tickets`` one arrival counter per (split block, batch*head), zero between
    launches. ``K_rows`` and ``V_rows`` are plain pointers (also when K and V are tensor
    descriptors) for the lead key's single rows. ONE_LOOP
    runs every tile through the partial-tile path (a full tile's mask reads as all ones):
    one software-pipelined loop instead of three short ones, at the price of the mask
    test on full tiles -- the better trade when most tiles are partial."""
    b = bh // n_heads
    h = bh % n_heads
    row = items + item * 8
    qb = tl.load(row)
    t0 = tl.load(row + 1)
    tmid = tl.load(row + 2)
    tcol = tl.load(row + 3)
    t1 = tl.load(row + 4)
    slot = tl.load(row + 5)
    lead = tl.load(row + 6)

    offs_m = qb * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, HEAD_DIM)
    if TMA:  # gathered: the block's tokens sit in consecutive rows from query_rows[qb]
        q0 = tl.load(query_rows + qb) if GATHER else qb * BM
        q = Q.load([b, h, q0, 0]).reshape(BM, HEAD_DIM)
        k_src = K
        v_src = V
    else:
        q_rows, row_ok = _rows(row_map, offs_m, n_pos, n_mem, GATHER)
        q = tl.load(_row_ptrs(Q, b, h, q_rows, stride_qb, stride_qh, stride_qn, offs_d),
                    mask=row_ok[:, None], other=0.0)
        k_src = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_d[None, :]
        v_src = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_d[None, :]

    m_i, l_i, acc = _lead_key(q, K_rows, V_rows, b, h, lead, row_map, stride_kb, stride_kh,
                              stride_kn, stride_vb, stride_vh, stride_vn, qk_scale, GATHER)

    if ONE_LOOP:
        tmid = t0
        tcol = t0
    # Full tiles: no mask work.
    for t in range(t0, tmid):
        m_i, l_i, acc = _tile_step(
            q, k_src, v_src, b, h, stride_kn, stride_vn, tl.load(tiles + 2 * t),
            row_map, n_pos, n_mem, m_i, l_i, acc, 0, qk_scale, BN=BN, GATHER=GATHER,
            APPLY_MASK=False, NW=NW, INLINE_PTX=INLINE_PTX, TMA=TMA)
    # Column tiles: one row of mask bits serves every row.
    for t in range(tmid, tcol):
        words = _column_mask(bitmasks, tl.load(tiles + 2 * t + 1), offs_n, BM, NW)
        m_i, l_i, acc = _tile_step(
            q, k_src, v_src, b, h, stride_kn, stride_vn, tl.load(tiles + 2 * t),
            row_map, n_pos, n_mem, m_i, l_i, acc, words, qk_scale, BN=BN, GATHER=GATHER,
            APPLY_MASK=True, NW=NW, INLINE_PTX=INLINE_PTX, TMA=TMA)
    # Partial tiles: scores outside the bitmask become -inf.
    for t in range(tcol, t1):
        words = _bitmask(bitmasks, tl.load(tiles + 2 * t + 1), tl.arange(0, BM), offs_n, NW)
        m_i, l_i, acc = _tile_step(
            q, k_src, v_src, b, h, stride_kn, stride_vn, tl.load(tiles + 2 * t),
            row_map, n_pos, n_mem, m_i, l_i, acc, words, qk_scale, BN=BN, GATHER=GATHER,
            APPLY_MASK=True, NW=NW, INLINE_PTX=INLINE_PTX, TMA=TMA)

    # Output rows looked up after the loop: no registers held through it.
    q_rows, row_ok = _rows(row_map, offs_m, n_pos, n_mem, GATHER)
    if SPLITS:  # the plan has split blocks (else the merge code is not compiled in)
        if slot < 0:
            _store_out(Out, acc, l_i, b, h, q_rows, row_ok, stride_ob, stride_oh, stride_on,
                       offs_d)
        else:  # workspace: acc (ws_rows, D), then m (ws_rows), then l (ws_rows)
            ws = (slot.to(tl.int64) * n_bh + bh) * BM + tl.arange(0, BM)
            # A row that met no key here (a padding row beside a global token) keeps l = 0:
            # its acc is neither stored nor read back.
            tl.store(WS + ws[:, None] * HEAD_DIM + offs_d[None, :], acc,
                     mask=(l_i > 0.0)[:, None])
            tl.store(WS + ws_rows * HEAD_DIM + ws, m_i)
            tl.store(WS + ws_rows * (HEAD_DIM + 1) + ws, l_i)
            split = tl.load(row + 7)
            s0 = tl.load(splits + 2 * split)
            s1 = tl.load(splits + 2 * split + 1)
            counter = tickets + split * n_bh + bh
            tl.debug_barrier()  # every warp's stores issued before the release below
            if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == s1 - s0 - 1:
                tl.store(counter, 0)  # nobody else touches it again in this launch
                acc, l_i = _merge_pieces(WS, ws_rows, s0, s1, bh, n_bh, BM, HEAD_DIM)
                _store_out(Out, acc, l_i, b, h, q_rows, row_ok, stride_ob, stride_oh,
                           stride_on, offs_d)
    else:
        _store_out(Out, acc, l_i, b, h, q_rows, row_ok, stride_ob, stride_oh, stride_on, offs_d)


@triton.jit
def block_sparse_attn_fwd(
    Q, K, V, K_rows, V_rows, Out, WS, ws_rows, row_map, query_rows, items, tiles, bitmasks,
    splits, tickets, prog_ptr, prog_units, n_pos, n_mem, n_heads, n_bh, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BM: tl.constexpr, BN: tl.constexpr, HEAD_DIM: tl.constexpr, NW: tl.constexpr,
    GATHER: tl.constexpr, PERSISTENT: tl.constexpr, INLINE_PTX: tl.constexpr,
    ONE_LOOP: tl.constexpr, TMA: tl.constexpr, SPLITS: tl.constexpr,
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
            unit // n_bh, unit % n_bh, Q, K, V, K_rows, V_rows, Out, WS, ws_rows, row_map,
            query_rows, items, tiles, bitmasks, splits, tickets, n_pos, n_mem, n_heads, n_bh,
            qk_scale,
            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
            stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
            BM, BN, HEAD_DIM, NW, GATHER, INLINE_PTX, ONE_LOOP, TMA, SPLITS)
