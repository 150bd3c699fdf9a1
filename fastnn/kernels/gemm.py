"""Loop-level matrix products: one GEMM core for training and prediction.

With rows as samples, a dense layer with weights W (k x n) needs

    forward   z  = a W           (m x k)(k x n)
    gradient  dW = a^T delta     (k x m)(m x n), a sum over the batch rows
    backward  dA = delta W^T     (m x n)(n x k)

All three are ``gemm(A, B, C, ...)``: C (=, +=) A B, where A is any 2-D view
(a matrix or a transposed one, read through its strides) and B, C have rows
contiguous along their columns.  So the forward reads W in place, the weight
gradient reads a^T as the view ``a.T`` and delta in place, and only the
backward needs W^T (``pack_transpose``; the training step rewrites the rows of
W^T as it updates the rows of W).

The loop nest is BLIS's (Van Zee & van de Geijn), around the register tile of
microkernel.py:

    for jc in N, step NC            columns of C (and B) in blocks
      for pc in K, step KC          the shared dimension in blocks: kc rows of B,
                                    their full kc x NR panels packed one after
                                    another (when at least PACK_MIN_ROWS rows
                                    share them)
        for ic in M, step MC        rows of C (and A): an MC x kc block of A in
                                    L2, packed into MR x kc micro-panels when A
                                    is read down its columns (a^T)
          for jr in jc block, step NR    a kc x NR panel of B (in L1)
            for ir in ic block, step MR  one MR x NR tile of C in registers:
              C[ir, jr] (+)= A[ir, pc] B[pc, jr]    (the micro-kernel; this
                                    loop runs inside it, one call per panel)
        for the last M % MR rows (when fewer than ROW_KERNEL_BELOW, and B
        is not packed): one-row kernels across the jc block, up to 4 NR wide

The epilogue does, with the tile's last K block, the elementwise work that
would otherwise be another pass over C:

    EPI_STORE      C = acc           (or C += acc with ``accumulate``)
    EPI_BIAS_ACT   C = h(acc + b)    forward: bias and activation
    EPI_DERIV      C = acc * h'(H)   backward: derivative from the outputs H

Bias, relu and relu' are applied by the micro-kernel to its registers before
the store (``_register_epilogue``); sigmoid and tanh by row loops over the
tile right after it is stored, while it is in L1.  Applied row by row to
every 16-column piece, the bias alone cost more than the product at the
spiral's 300 x 2 x 100 (a call and two slices per 16 elements).

Every element C[i, j] is summed over p in the same order (K blocks in order,
p in order inside a block, one fused multiply-add per term) whatever tile,
lane or edge path computes it, so a row's result does not depend on the other
rows of the batch or on how rows or columns are split between threads.  No
BLAS is called.
"""
import numba
import numpy as np
from numba import types
from numba.extending import overload, register_jitable

from .._jit import jit
from .activations import IDENTITY, RELU, bias_activate_row, derivative_row
from . import microkernel as uk
from .shared import SharedFunction, calls_by_symbol

EPI_STORE = 0
EPI_BIAS_ACT = 1
EPI_DERIV = 2

MR = uk.MR          # rows of the register tile
NV = uk.NV          # vectors per tile row
VECTOR_BYTES = uk.VECTOR_BITS // 8
# K block, at most KC, K split into equal blocks (784 = 4 x 196, or 7 x 112).
# The kc x NR panel of B streams from L2 for each tile; B is read in place, so
# with 4 kB between its rows (n = 1024 float32) longer panels overflow L2's 16
# ways.  With AVX-512's 64-column panels, 128 rows keep a packed panel (32 kB
# in float32 or float64) in a 48 kB L1: 20000 x 784 -> 256 -> 10 predicted
# 3-8 % faster per np.dot GFLOP/s than with 256 (3 runs alternated, 1 thread,
# rocketlake).  AVX2's 16-column panels fit at 256.
KC = 128 if uk.VECTOR_BITS >= 512 else 256
MC = 16 * MR        # rows of A per block (96 x KC float32: 48-96 kB, in L2)
NC = 2048           # columns per block
# A product whose C has at most VL / DOT_LANES columns, and at most
# microkernel.DOT_COLUMNS (and K of at least VL), is computed as dot products
# along K (_dot_product) instead of register tiles.
DOT_LANES = 2
# Fewer rows than this at the bottom edge go through the one-row kernel, once
# per row (a full-height tile would compute MR rows to keep a few).  Either
# way each row gets the same arithmetic.
ROW_KERNEL_BELOW = 4
# B's panels are packed when at least this many rows of tiles use each one:
# the copy (kc x NR elements) then costs under 5 % of the panel's FMAs, and
# a one-row prediction or a 16-row batch reads B's full panels in place (the
# edge panel, if any, is packed whenever there are tiles).  A K
# block's panels are packed once per product (not once per MC rows: 6 times
# for 512 rows) into one slab.
PACK_MIN_ROWS = 4 * MR
# A's rows are packed (pack_a_panel, MR x kc micro-panels) when A is a
# transposed view and at least this many panels of B share each packed block:
# the copy, about 0.4 ns an element (znver3), is then under 4 % of the FMAs
# it serves.  A read along its rows (forward, backward) is left in place: its
# MR rows stream from L2 (packing them measured no faster).
PACK_A_MIN_PANELS = 8
# Rows of B packed at a time across all its panels (_pack_panels)
PACK_ROW_GROUP = 4


@jit(inline="always")
def _register_epilogue(mode, code):
    """The part of the epilogue the micro-kernel applies in registers
    (microkernel.EPI_*): bias, bias + relu, relu'; EPI_NONE leaves the rest
    (sigmoid, tanh) to the row loops of ``_epilogue``."""
    if mode == EPI_BIAS_ACT:
        if code == IDENTITY:
            return _EPI_BIAS
        if code == RELU:
            return _EPI_BIAS_RELU
    elif mode == EPI_DERIV and code == RELU:
        return _EPI_RELU_DERIV
    return _EPI_NONE


@jit(refcount=False)
def _epilogue(C, i0, i1, j0, j1, mode, code, bias, H):
    """The fused elementwise step on rows i0:i1, columns j0:j1 of C, a row at a
    time (contiguous pieces, so LLVM vectorises them)."""
    # One contiguous row piece at a time: applied to the tile as a 2-D view
    # (non-contiguous to numba) the loops stayed scalar and the relu derivative
    # branched on the data, mispredicted for about every other element (one
    # 128 x 256 backward product: 145 us, against 19 us row by row)
    if mode == EPI_BIAS_ACT:
        for i in range(i0, i1):
            bias_activate_row(C[i][j0:j1], bias[j0:j1], code)
    elif mode == EPI_DERIV and code != IDENTITY:
        for i in range(i0, i1):
            derivative_row(C[i][j0:j1], H[i][j0:j1], code)


@jit(inline="always")
def gemm(A, B, C, accumulate, mode, code, bias, H, pack=None, packed_b=None):
    """C (=, or += when ``accumulate``) A B, then the epilogue, on the calling thread.

    A (M x K) any strides; B (K x N) and C (M x N) contiguous along rows.
    ``mode`` is EPI_STORE, EPI_BIAS_ACT (bias[j], activation ``code``) or
    EPI_DERIV (times h'(H[i, j]) for activation ``code``).  K == 0 gives the
    epilogue applied to zero (or to C).  ``pack``: a workspace (1-D, C's
    dtype, at least ``product_elements(A, C, packed_b)`` elements, which
    ``pack_elements(N, C.itemsize)`` and ``dot_product_elements`` bound for
    any product of N columns) that B's panels and A's micro-panels are
    packed into; without
    one, one of that size is allocated here, in the caller (a smaller one
    raises ValueError): the core itself allocates nothing, so it runs
    without numba's reference counting (_jit.jit's ``refcount``).  A and B
    are passed on as
    strided views, so a matrix and a transposed one, or a block of B's
    columns, share one compiled core (each compiled copy of the core adds
    seconds to the first run), called through its shared symbol
    (``_gemm_core``).  ``packed_b``: B's panels already packed by
    ``pack_b_rows`` (B is then not read); used by the training step, whose
    weight-gradient blocks share one packed delta.
    """
    packed = _packed_or_empty(packed_b, C)
    _gemm_core(A[:, 0:], B[:, 0:], C, accumulate, mode, code, bias, H,
               _pack_or_new(pack, A, C, packed), packed)


def _pack_or_new(pack, A, C, packed_b):
    """``pack``, or, when the caller gave none, a new workspace of what the
    product packs into (product_elements; allocated here, in the caller: the
    core allocates nothing)."""


@overload(_pack_or_new, inline="always")
def _pack_or_new_overload(pack, A, C, packed_b):
    if pack is None or isinstance(pack, (types.NoneType, types.Omitted)):
        return lambda pack, A, C, packed_b: np.empty(product_elements(A, C, packed_b), C.dtype)
    return lambda pack, A, C, packed_b: pack


def _packed_or_empty(packed_b, C):
    """``packed_b``, or an empty matrix (B not packed ahead) when the caller gave none."""


@overload(_packed_or_empty, inline="always")
def _packed_or_empty_overload(packed_b, C):
    if packed_b is None or isinstance(packed_b, (types.NoneType, types.Omitted)):
        return lambda packed_b, C: C[:0]
    return lambda packed_b, C: packed_b


def packed_b_elements(k, n, itemsize):
    """Elements of a ``packed_b`` matrix for a B of k x n: every panel of NR
    columns (the last one zero-padded), all k rows of each."""
    nr = NV * (VECTOR_BYTES // itemsize)
    return k * -(-n // nr) * nr


@jit(inline="always")
def panel_columns(C):
    """NR, the columns of a panel of B (and of a register tile), for C's dtype."""
    return NV * (VECTOR_BYTES // C.itemsize)


@jit(refcount=False)
def pack_b_rows_kernel(B, r0, r1, P):
    """Rows r0:r1 of B (K x N) packed into P as gemm's ``packed_b`` reads
    them: panel q (columns q NR to q NR + NR, zero-padded at the right edge)
    in rows q K to q K + K of P (P: at least (panels * K) x NR).  Disjoint
    row ranges can be packed by different threads."""
    K, N = B.shape
    nr = P.shape[1]
    _pack_panels(B, r0, r1, _ZERO, (N + nr - 1) // nr * nr, N, P, K, r0)


def _pack_b_rows_signature(dtype):
    f = numba.from_dtype(np.dtype(dtype))
    matrix = types.Array(f, 2, "C")
    return (matrix, types.int64, types.int64, matrix)


# Called by symbol from the training step's shards (kernels.step.pack_deltas):
# inlined there, its loops and intrinsics were typed and optimised again
# inside the shard's kernel (about 2 s more of a cold first run)
PACK_B_ROWS = SharedFunction(pack_b_rows_kernel, _pack_b_rows_signature, "fastnn.pack_b_rows")


@calls_by_symbol(PACK_B_ROWS)
def pack_b_rows(B, r0, r1, P):
    """pack_b_rows_kernel (by its shared symbol in compiled code)."""
    pack_b_rows_kernel(B, r0, r1, P)


@jit(inline="always")
def _pack_panels(B, p0, p1, j0, j1, n_end, P, panel_rows, row0):
    """Rows p0:p1 of B's panels from column j0 to j1 (whole panels of NR
    columns; columns from n_end on are written as zeros) into P: row p of
    panel q (columns j0 + q NR..) goes to P[q * panel_rows + row0 + p - p0].

    PACK_ROW_GROUP rows of every panel at a time, so B is read along its
    rows: panel by panel, a panel's kc rows were kc cache lines a row of B
    apart (4 kB for 1024 columns), and the copy ran at 0.34-0.38 ns an
    element at 784 x 1024 and 1024 x 1024 float32 against 0.14-0.20 in
    row groups (0.16-0.17 against 0.11-0.12, 784 x 256; znver3)."""
    nr = P.shape[1]
    for p in range(p0, p1, PACK_ROW_GROUP):
        pe = min(p1, p + PACK_ROW_GROUP)
        for j in range(j0, j1, nr):
            at = (j - j0) // nr * panel_rows + row0 + p - p0
            uk.pack_panel(pe - p, B, (p, j), min(nr, n_end - j), P[at:at + pe - p])


def pack_elements(n_columns, itemsize):
    """Elements of a ``pack`` workspace big enough for any product whose C
    has at most ``n_columns`` columns (of ``itemsize`` bytes): a K block
    (at most KC rows) of B's panels across one column block (at most NC
    columns, plus the zero-padded edge panel), A's packed MC x KC block, and
    the slack to start both on a 64-byte boundary."""
    lanes = VECTOR_BYTES // itemsize
    nr = NV * lanes
    panels = min(int(n_columns), NC) // nr + 1
    return KC * panels * nr + KC * MC + 2 * (64 // itemsize)


@register_jitable
def dot_product_shape(k, n, lanes):
    """Whether gemm computes a product of K = k and N = n columns (A read along
    its rows) as dot products (_dot_product) with ``lanes`` per vector: the
    rule, for compiled code and for sizing workspaces in Python."""
    return n * DOT_LANES <= lanes and n <= uk.DOT_COLUMNS and k >= lanes


@register_jitable
def dot_product_elements(k, n, itemsize):
    """Elements of ``pack`` that a product of K = k, N = n columns computed as
    dot products (_dot_product) needs for B^T, or 0 when it is not one."""
    lanes = VECTOR_BYTES // itemsize
    if not dot_product_shape(k, n, lanes):
        return 0
    return n * -(-k // lanes) * lanes + 64 // itemsize


@register_jitable
def _as_dot_products(A, K, N, vl):
    """Whether the product is computed as dot products (_dot_product): few
    columns, and A laid out as rows (not a transposed view, even a
    one-column one, so that a^T delta and (delta^T a)^T keep the same bits:
    weight_gradient_rows)."""
    return (dot_product_shape(K, N, vl) and A.strides[1] == A.itemsize
            and A.strides[0] >= K * A.itemsize)


@register_jitable
def _tile_plan(M, K, N, itemsize, a_down_columns, prepacked):
    """How gemm_strided runs a product with tiles: (pack_b, m_tiles, kb,
    edge_slot, slab_panels, slab_size, pack_a, need), ``slab_size`` the
    elements of B's packed panels and ``need`` those of ``pack`` the product
    packs into (0 when it packs nothing).

    Rows [0, m_tiles) go through MR-row tiles, the few rows after them
    through the one-row kernels: a last partial tile keeps at least
    ROW_KERNEL_BELOW rows, or any number once B's panels are packed (at
    least PACK_MIN_ROWS rows).  A one-row kernel reads B in place and runs
    one FMA chain per vector of C where a tile runs MR: on 128 x 784 x 256
    (a training batch or a prediction block: 21 tiles and 2 rows) each of
    the 2 rows cost as much as 6 tile rows, so a partial tile of 2 valid
    rows costs less than the two rows alone (znver3).
    B's full panels are packed when enough tiles share each one: the K
    block's kc x (jc block) slab once per (jc, pc), in row groups
    (_pack_panels); or B came packed ahead (packed_b: every panel, the
    edge one zero-padded), and nothing is copied here.  The right edge's
    panel (fewer than nr columns) is always packed, zero-padded, for the
    tiles: they read B without masks (microkernel.py).  A's rows are packed
    too when A is read down its columns (a^T of the weight gradient) and
    enough panels of B reuse each packed block."""
    nr = NV * (VECTOR_BYTES // itemsize)
    pack_b = prepacked or (M >= PACK_MIN_ROWS and N >= nr)
    m_tiles = M if M % MR == 0 or M % MR >= ROW_KERNEL_BELOW or pack_b else M - M % MR
    n_kblocks = (K + KC - 1) // KC
    kb = (K + n_kblocks - 1) // n_kblocks   # K in equal blocks: the same for every row
    edge_slot = min(N, NC) // nr if pack_b else 0
    slab_panels = 0 if prepacked else edge_slot + (1 if m_tiles > 0 and N % nr != 0 else 0)
    pack_a = pack_b and a_down_columns and N >= PACK_A_MIN_PANELS * nr
    slab_size = kb * slab_panels * nr
    a_size = kb * MC if pack_a else 0
    pad = 64 // itemsize   # each block starts on a 64-byte boundary
    need = slab_size + a_size + 2 * pad if slab_size > 0 or a_size > 0 else 0
    return pack_b, m_tiles, kb, edge_slot, slab_panels, slab_size, pack_a, need


@register_jitable
def product_elements(A, C, packed_b):
    """Elements of ``pack`` that gemm(A, B, C, ..., packed_b) packs into (0:
    nothing): the same plan as gemm_strided follows."""
    M, K = A.shape
    N = C.shape[1]
    if K == 0:
        return 0
    vl = VECTOR_BYTES // C.itemsize
    if _as_dot_products(A, K, N, vl):
        return dot_product_elements(K, N, C.itemsize)
    return _tile_plan(M, K, N, C.itemsize, A.strides[0] < A.strides[1],
                      packed_b.shape[0] > 0)[-1]


def _gemm_core(A, B, C, accumulate, mode, code, bias, H, pack, packed_b):
    """gemm_strided; in compiled code through the shared core's symbol when
    the operands have its types (GEMM_CORE, below)."""
    gemm_strided(A, B, C, accumulate, mode, code, bias, H, pack, packed_b)


@jit(refcount=False)
def gemm_strided(A, B, C, accumulate, mode, code, bias, H, pack, packed_b):
    """gemm for an A typed as a strided view (see gemm); ``packed_b`` empty
    unless B's panels were packed ahead (pack_b_rows)."""
    M, K = A.shape
    N = C.shape[1]
    if K == 0:  # an empty sum: C = 0 (or unchanged), then the epilogue
        if not accumulate:
            C[:, :] = 0
        _epilogue(C, _ZERO, M, _ZERO, N, mode, code, bias, H)
        return
    vl = VECTOR_BYTES // C.itemsize    # lanes per vector (a division: once per call)
    if _as_dot_products(A, K, N, vl):
        _dot_product(A, B, C, accumulate, mode, code, bias, H, pack)
        return
    nr = NV * vl
    wide = uk.ROW_VECTORS * vl
    epi = _register_epilogue(mode, code)
    # what is left for the row loops: sigmoid and tanh (identity' is nothing)
    rows_epilogue = epi == _EPI_NONE and (mode == EPI_BIAS_ACT or (mode == EPI_DERIV
                                                                   and code != IDENTITY))
    # The micro-kernels are called right here, the choice of variant written
    # out in the loops (written so when the core still counted references:
    # through a helper function, even inline="always", numba increfed and
    # decrefed every array argument at each call, ten atomic NRT calls a
    # tile, about 80 ns a tile; asm of gemm_strided, znver5).
    prepacked = packed_b.shape[0] > 0
    pack_b, m_tiles, kb, edge_slot, slab_panels, slab_size, pack_a, need = _tile_plan(
        M, K, N, C.itemsize, A.strides[0] < A.strides[1], prepacked)
    # B's panels and A's rows go into the caller's workspace ``pack`` (the
    # core never allocates; a workspace too small is refused).  (A product's
    # allocation each call cost about 15 % of a training step where glibc's
    # mmap threshold is fixed, as in a Dask worker: MALLOC_TRIM_THRESHOLD_
    # set, every big buffer mapped and faulted in anew.)
    if pack.shape[0] < need:
        raise ValueError("gemm: the pack workspace is smaller than product_elements")
    pad = 64 // C.itemsize
    slab = _aligned_block(pack, 0, kb * slab_panels, nr) if slab_size > 0 else C[:0]
    a_buf = _aligned_block(pack, slab_size + pad, kb * (MC // MR), MR) if pack_a else C[:0]
    a_view = a_buf.T    # A's packed block as the micro-kernel reads it: MR x (tiles * kb)
    for jc in range(0, N, NC):
        jc_end = min(N, jc + NC)
        full_end = jc + (jc_end - jc) // nr * nr    # columns in full panels
        for pc in range(0, K, kb):
            kc = min(kb, K - pc)
            add = accumulate != 0 or pc > 0
            last = pc + kc == K
            epi_now = epi if last else _EPI_NONE
            if pack_b and not prepacked:
                _pack_panels(B, pc, pc + kc, jc, full_end, full_end, slab, kb, _ZERO)
            if m_tiles > 0 and full_end < jc_end and not prepacked:
                uk.pack_panel(kc, B, (pc, full_end), jc_end - full_end,
                              slab[edge_slot * kb:edge_slot * kb + kc])
            for ic in range(0, m_tiles, MC):
                ic_end = min(m_tiles, ic + MC)
                Ap = A
                if pack_a:
                    for ir in range(ic, ic_end, MR):
                        uk.pack_a_panel(kc, A, (ir, pc), min(MR, ic_end - ir), a_buf,
                                        (ir - ic) // MR * kb)
                    Ap = a_view
                for jr in range(jc, jc_end, nr):
                    n_valid = min(nr, jc_end - jr)
                    # the panel B[pc:pc+kc, jr:jr+nr]: packed (full panels) or in place
                    Bp, pb, jb = B, pc, jr
                    if prepacked:
                        Bp, pb, jb = packed_b, jr // nr * K + pc, _ZERO
                    elif jr >= full_end:
                        Bp, pb, jb = slab, edge_slot * kb, _ZERO
                    elif pack_b:
                        Bp, pb, jb = slab, (jr - jc) // nr * kb, _ZERO
                    # the column of register tiles C[ic:ic_end, jr:jr+nr] (+)=
                    # A[ic:ic_end, pc:pc+kc] B[pc:pc+kc, jr:], MR rows at a time
                    # inside the micro-kernel; A's next tile MR rows on, or the
                    # next packed micro-panel
                    a_org, a_step = (ic, pc), (_MR, _ZERO)
                    if pack_a:
                        a_org, a_step = (_ZERO, _ZERO), (_ZERO, kb)
                    origin = ((ic, jr), a_org, (pb, jb))
                    m_rows = ic_end - ic
                    if n_valid == nr:
                        uk.tile_full(kc, Ap, Bp, C, origin, m_rows, n_valid, add, epi_now, bias,
                                     H, a_step)
                    elif n_valid <= vl:
                        uk.tile_edge1(kc, Ap, Bp, C, origin, m_rows, n_valid, add, epi_now,
                                      bias, H, a_step)
                    else:
                        uk.tile_edge(kc, Ap, Bp, C, origin, m_rows, n_valid, add, epi_now,
                                     bias, H, a_step)
                    if last and rows_epilogue:
                        _epilogue(C, ic, ic_end, jr, jr + n_valid, mode, code, bias, H)
            for r in range(m_tiles, M):
                # one row at a time, with the widest one-row kernel that fits
                jr = jc
                while jr < jc_end:
                    n_left = jc_end - jr
                    origin = ((r, jr), (r, pc), (pc, jr))
                    if n_left >= wide:
                        done = wide
                        uk.row_wide(kc, A, B, C, origin, _ONE, done, add, epi_now, bias, H,
                                    _ONE_ROW)
                    elif n_left >= nr:
                        done = nr
                        uk.row_full(kc, A, B, C, origin, _ONE, done, add, epi_now, bias, H,
                                    _ONE_ROW)
                    elif n_left <= vl:
                        done = n_left
                        uk.row_edge1(kc, A, B, C, origin, _ONE, done, add, epi_now, bias, H,
                                     _ONE_ROW)
                    else:
                        done = n_left
                        uk.row_edge(kc, A, B, C, origin, _ONE, done, add, epi_now, bias, H,
                                    _ONE_ROW)
                    if last and rows_epilogue:
                        _epilogue(C, r, r + 1, jr, jr + done, mode, code, bias, H)
                    jr += done


@jit(inline="always")
def _dot_product(A, B, C, accumulate, mode, code, bias, H, pack):
    """gemm for a C of at most half a vector's lanes in columns (N *
    DOT_LANES <= VL, and N <= DOT_COLUMNS) and A read along its rows: each
    element a dot product along K (microkernel.dot_rows) of a row of A and a
    row of B^T, packed into ``pack`` zero-padded to whole vectors; the bias
    of a linear layer (a classifier's or a regression's last) added to each
    sum before it is stored, as the tiles add it, any activation by the row
    loops of the epilogue (the same bits as in registers).

    A register tile there holds N useful lanes of VL (a 2-100-3 network's
    last layer: 3 of 16 float32 lanes on AVX-512; a single output 1 of 16):
    300 x 100 x 3 float32 took 7.7 us as tiles, 3.3-3.7 us as dot products,
    np.dot 3.9-4.7 (rocketlake).  The sums are added in another order than
    the tiles' (lanes, then a tree), the same for every row: the choice
    depends on N, K and A's layout, never on the rows."""
    M, K = A.shape
    N = C.shape[1]
    vl = VECTOR_BYTES // C.itemsize
    kp = (K + vl - 1) // vl * vl
    if pack.shape[0] < dot_product_elements(K, N, C.itemsize):
        raise ValueError("gemm: the pack workspace is smaller than product_elements")
    BT = _aligned_block(pack, 0, N, kp)
    for j in range(N):
        row = BT[j]
        for p in range(K):
            row[p] = B[p, j]
        for p in range(K, kp):
            row[p] = 0
    linear = mode == EPI_BIAS_ACT and code == IDENTITY
    uk.dot_rows(A, BT, C, M, N, K, accumulate, _EPI_BIAS if linear else _EPI_NONE, bias)
    if not linear:   # an activation (or its derivative) on so few columns: the row loops
        _epilogue(C, _ZERO, M, _ZERO, N, mode, code, bias, H)


@jit(inline="always")
def _aligned_block(buf, offset, rows, nr):
    """A rows x nr block of the flat workspace ``buf`` for packed operands
    (B's panels, nr = NR columns; A's micro-panels, nr = MR), starting at
    the first 64-byte boundary at or after buf[offset] (numba aligns arrays
    to 32 at most), so that no vector load of a panel straddles two cache
    lines (a zmm load that does costs 10-25 %).  ``buf`` holds 64 bytes of
    slack for it."""
    itemsize = buf.itemsize
    address = buf.ctypes.data + offset * itemsize
    start = offset + (64 - address % 64) % 64 // itemsize
    return buf[start:start + rows * nr].reshape((rows, nr))


@jit(inline="always")
def vector_lanes(C):
    """Elements of C's dtype in one vector register."""
    return VECTOR_BYTES // C.itemsize


@jit(inline="always")
def pack_transpose(S, D):
    """D = S.T for S (m x n), D (n x m): W^T for the backward product.

    D is passed on as a strided view, so a whole W^T (a matrix) and the
    columns of it that an update rewrites (a strided view) share one compiled
    copy: two cost about 0.6 s more of the first run, and the copy is the same
    element for element whatever the layout type.
    """
    _pack_transpose(S, D[:, 0:])


@jit(refcount=False)
def _pack_transpose(S, D):
    """pack_transpose for a D typed as a strided view.

    Eight rows of S are read together and written as 8-element pieces of the
    rows of D; columns go in blocks of 256 so that the rows of D being written
    stay in cache (measured at 784 x 256 float32: 0.2-0.3 ns per element,
    against 0.6 for a 16 x 16 blocked scalar loop).
    """
    m, n = S.shape
    m8 = m - m % 8
    for j0 in range(0, n, 256):
        j1 = min(n, j0 + 256)
        for i in range(0, m8, 8):
            s0 = S[i]
            s1 = S[i + 1]
            s2 = S[i + 2]
            s3 = S[i + 3]
            s4 = S[i + 4]
            s5 = S[i + 5]
            s6 = S[i + 6]
            s7 = S[i + 7]
            for j in range(j0, j1):
                d = D[j]
                d[i] = s0[j]
                d[i + 1] = s1[j]
                d[i + 2] = s2[j]
                d[i + 3] = s3[j]
                d[i + 4] = s4[j]
                d[i + 5] = s5[j]
                d[i + 6] = s6[j]
                d[i + 7] = s7[j]
    for i in range(m8, m):
        for j in range(n):
            D[j, i] = S[i, j]


@jit(refcount=False)
def column_sums_acc(S, colsum):
    """colsum[j] += sum_i S[i, j] (the bias gradient from delta), rows in
    order; S C-contiguous.  A block of columns at a time, summed in
    registers (microkernel.column_sums_block)."""
    n = S.shape[1]
    width = uk.SUM_VECTORS * vector_lanes(S)
    for j0 in range(0, n, width):
        uk.column_sums_block(S, j0, n - j0, colsum)


# The three training products as the step performs them (tests, benchmarks).
# Flags are typed int64 values, not literals (one compiled copy of the GEMM).
_ZERO = np.int64(0)
_ONE = np.int64(1)
_MR = np.int64(MR)
_ONE_ROW = (_ONE, _ZERO)   # a one-row kernel's a_step (one tile: never used)
_STORE = np.int64(EPI_STORE)
_EPI_NONE = np.int64(uk.EPI_NONE)
_EPI_BIAS = np.int64(uk.EPI_BIAS)
_EPI_BIAS_RELU = np.int64(uk.EPI_BIAS_RELU)
_EPI_RELU_DERIV = np.int64(uk.EPI_RELU_DERIV)


@jit
def product_forward(a, W, WT, z):
    """z = a W (W read in place; WT is unused, kept for the benchmark suite's signature)."""
    gemm(a, W, z, _ZERO, _STORE, _ZERO, z[0], z)


@jit
def product_weight_grad(a, d, aT, dT, G):
    """G += a^T d (a read transposed in place; aT, dT unused, kept for the suite)."""
    gemm(a.T, d, G, _ONE, _STORE, _ZERO, G[0], G)


@jit
def product_backward(d, W, out):
    """out = d W^T, with W^T packed first (into a new array: this function is for
    tests and benchmarks; the training step keeps W^T in its workspace)."""
    WT = np.empty((W.shape[1], W.shape[0]), W.dtype)
    pack_transpose(W, WT)
    gemm(d, WT, out, _ZERO, _STORE, _ZERO, out[0], out)


@jit
def product_backward_kept(d, WT, out):
    """out = d W^T from W^T already packed, as the training step runs it (its
    update rewrites the rows of W^T as it updates those of W)."""
    gemm(d, WT, out, _ZERO, _STORE, _ZERO, out[0], out)


def _core_signature(dtype):
    """The operand types of every product of training and prediction: A and B
    strided views (the micro-kernels read them through their strides), C and
    H C-contiguous matrices (the epilogue's row loops vectorise on them),
    bias and the pack workspace vectors, int64 flags."""
    f = numba.from_dtype(np.dtype(dtype))
    matrix = types.Array(f, 2, "C")
    view = types.Array(f, 2, "A")
    vector = types.Array(f, 1, "C")
    return (view, view, matrix, types.int64, types.int64, types.int64, vector, matrix, vector,
            matrix)


# The GEMM core, compiled once per dtype (when a product of that dtype is
# first compiled or loaded: from the cache after the first run, and never
# for a dtype the process does not use) and called by symbol from every
# product, instead of
# being linked, optimised and turned into machine code again inside each
# function above it (shared.py).  A product with other operand types (a
# test's C with a row stride wider than its columns) links the core in as
# numba does by default: the same source, the same arithmetic.
GEMM_CORE = SharedFunction(gemm_strided, _core_signature, "fastnn.gemm_core")

calls_by_symbol(GEMM_CORE)(_gemm_core)
