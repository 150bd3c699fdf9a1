"""The GEMM micro-kernel, emitted as LLVM vector IR through numba's ``intrinsic``.

It computes one register tile of C = A B:

    C[r, j] (=, or +=)  sum_{p < kc} A[r, p] * B[p, j]     r < MR, j < NV * VL

with the tile held in MR x NV vector accumulators (VL lanes each: 16 float32
or 8 float64 in a zmm register on AVX-512, half that on AVX2).  Each step p
loads NV vectors of row p of B, broadcasts the MR scalars A[r, p] and does
MR x NV fused multiply-adds: an outer product of a column of A and a row of B,
the BLIS formulation.  LLVM's loop vectoriser cannot find this on its own
(numba has no vector types), so the loop body is written here as IR; the rest
of the GEMM (loops, edges, epilogues) is ordinary numba code in gemm.py.

Operands are 2-D array views read through their strides, so one kernel
serves every product of training without transposing anything: A may be a
matrix or a transposed one (A[r, p] at any row and column stride), B and C
have rows contiguous along j.

Edges.  Rows r >= m_valid read row m_valid - 1 of A and are never stored, so
every row of C goes through exactly the same arithmetic wherever it sits in
the matrix (a prediction does not depend on the other rows of the batch).
Columns j >= n_valid are never stored to C (masked stores: in the last
vector of a MASK_LAST variant, in every vector of a MASK_ALL one); the
one-row kernels do not load them from B either (masked loads), the MR-row
tiles read them as the zero padding of a packed edge panel.  The sum over p
runs in order 0..kc-1 with one ``llvm.fmuladd`` per term and per lane, so C[r, j]
has the same bits in every variant, lane and tile position.

Epilogue in registers.  ``epi`` (a run-time value, so one compiled kernel
serves every case) applies the elementwise step of the product to the tile
before it is stored, after any old C is added:

    EPI_NONE        C = acc
    EPI_BIAS        C = acc + b[j]                      (linear output layer)
    EPI_BIAS_RELU   C = max(acc + b[j], 0)              (forward, relu)
    EPI_RELU_DERIV  C = acc if H[r, j] > 0 else 0       (backward, relu')

with the same operations, in the same order, as the row-by-row loops of
activations.py (a NaN stays NaN).  Sigmoid and tanh stay in those loops.
"""
from contextlib import contextmanager

import llvmlite.ir as ir
import llvmlite.binding as llvm
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

# ---------------------------------------------------------------------------
# Vector width, chosen once when the module loads from the CPU numba compiles
# for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set, else the host).  numba's
# cache is keyed by that same CPU, so code built for one width is never loaded
# on a CPU of another.
# ---------------------------------------------------------------------------
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake",
                "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids",
                "znver4", "znver5", "x86-64-v4", "diamondrapids")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
              "arrowlake", "lunarlake", "znver1", "znver2", "znver3", "x86-64-v3",
              "gracemont", "sierraforest", "grandridge", "clearwaterforest", "pantherlake")


def _vector_bits():
    """Width in bits of the vector registers of the target CPU (512, 256 or 128)."""
    name = config.CPU_NAME
    if config.CPU_FEATURES:
        features = config.CPU_FEATURES
    elif name and name != "host":
        if name.startswith(_AVX512_CPUS):
            return 512
        return 256 if name.startswith(_AVX2_CPUS) else 128
    else:
        features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features:
        return 512
    return 256 if "+avx2" in features else 128


VECTOR_BITS = _vector_bits()
# Vectors per tile row, and rows per tile: MR x NV accumulators plus NV vectors
# of B must fit the register file (32 zmm on AVX-512: 6 x 4 + 4 = 28; 16 ymm or
# xmm otherwise: 6 x 2 + 2 = 14), with enough independent FMA chains to hide
# the FMA latency.
NV = 4 if VECTOR_BITS == 512 else 2
MR = 6
MASKED_STORES_FAST = VECTOR_BITS == 512


def lanes(itemsize):
    """Elements per vector register for an element of ``itemsize`` bytes."""
    return VECTOR_BITS // (8 * itemsize)


def _llvm_float(dtype):
    return ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()


def _vector_intrinsic(builder, name, fnty):
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def _vector_type(dtype):
    """(element type, bytes per element, lanes, vector type) of a numba float dtype."""
    fty = _llvm_float(dtype)
    itemsize = dtype.bitwidth // 8
    vl = lanes(itemsize)
    return fty, itemsize, vl, ir.VectorType(fty, vl)


def _masked_load_and_store(builder, vecty):
    """The llvm.masked.load / llvm.masked.store declarations for ``vecty``."""
    vecptr = vecty.as_pointer()
    mask_ty = ir.VectorType(ir.IntType(1), vecty.count)
    name = f"v{vecty.count}{_suffix(vecty.element)}.p0"
    mload = _vector_intrinsic(builder, f"llvm.masked.load.{name}", ir.FunctionType(
        vecty, [vecptr, ir.IntType(32), mask_ty, vecty]))
    mstore = _vector_intrinsic(builder, f"llvm.masked.store.{name}", ir.FunctionType(
        ir.VoidType(), [vecty, vecptr, ir.IntType(32), mask_ty]))
    return mload, mstore


# AVX2's masked store (vmaskmovps / vmaskmovpd to memory) is slow on AMD's
# cores: at the spiral's right edge (100 columns: a panel of 4) one masked
# store a row of a tile cost about 8 ns, as much as a whole tile of 2 k steps
# (300 x 2 x 100 float32: 6.5 us against 4.1 us for 96 columns, znver3).
# AVX-512's masked stores (a k register) are as fast as plain ones
# (MASKED_STORES_FAST, set with the vector width below).


def _store_first(builder, value, ptr, n_left, align):
    """Store lanes [0, n_left) of ``value`` at ``ptr`` (all of them when
    n_left >= the vector's lanes, none when n_left <= 0) without a masked
    store: the whole vector when it fits, else pieces of halving width (4,
    2, 1 lanes of 8), each stored when n_left has its bit, the lanes after a
    stored piece moved down for the next: at most log2(lanes) plain stores,
    branches that every row of a tile takes the same way."""
    i64 = ir.IntType(64)
    vecty = value.type
    count = vecty.count
    with builder.if_else(builder.icmp_signed(">=", n_left, i64(count)),
                         likely=True) as (whole, part):
        with whole:
            builder.store(value, ptr, align=align)
        with part:
            rest = value
            at = builder.bitcast(ptr, vecty.element.as_pointer())
            width = count // 2
            while width >= 1:
                low = builder.shuffle_vector(rest, rest, ir.Constant(
                    ir.VectorType(ir.IntType(32), width), list(range(width))))
                high = builder.shuffle_vector(rest, rest, ir.Constant(
                    ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
                take = builder.icmp_unsigned("!=", builder.and_(n_left, i64(width)), i64(0))
                with builder.if_then(take):
                    if width == 1:
                        builder.store(builder.extract_element(low, ir.IntType(32)(0)), at,
                                      align=align)
                    else:
                        builder.store(low, builder.bitcast(at, low.type.as_pointer()),
                                      align=align)
                rest = builder.select(take, high, low)
                at = builder.select(take, builder.gep(at, [i64(width)]), at)
                width //= 2


def _splat(builder, scalar, vecty):
    """<VL x T> with every lane = scalar (folds into an embedded broadcast)."""
    undef = ir.Constant(vecty, ir.Undefined)
    first = builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vecty.count), None)
    return builder.shuffle_vector(first, undef, zeros)


def _lane_mask(builder, n_left, count):
    """<count x i1>: lane l is on when l < n_left (n_left an i64, may be <= 0)."""
    i64 = ir.IntType(64)
    idx = ir.Constant(ir.VectorType(i64, count), [i64(l) for l in range(count)])
    limit = _splat(builder, n_left, ir.VectorType(i64, count))
    return builder.icmp_signed("<", idx, limit)


EPI_NONE = 0
EPI_BIAS = 1
EPI_BIAS_RELU = 2
EPI_RELU_DERIV = 3

# The flag of the epilogue's additions.  numba gives every floating-point
# instruction without flags the function's fastmath flags, and with 'reassoc'
# and 'contract' LLVM folded the bias into the last multiply-add of the sum
# (other bits than the row loops, which add it to the rounded sum).  'nsz'
# alone allows no reassociation and keeps the instruction's own flags.
EXACT = ("nsz",)

MASK_NONE = 0   # every vector full
MASK_LAST = 1   # the last vector holds the columns below n_valid
MASK_ALL = 2    # any vector may hold columns at or past n_valid


def _make_microkernel(rows, nv, mask):
    """An intrinsic for a ``rows`` x (nv vectors) tile, with edge ``mask``.

    Tiles of MR rows read B without masks: their B is a panel of full
    vectors (a packed, zero-padded panel at the right edge; pack_panel), so
    only the stores, the bias and H are masked.  Masked loads inside the k
    loop cost the 6 x 1-vector tile about 7-10 cycles a step instead of the
    4 of its FMA chains: LLVM rebuilt the AVX2 lane mask (<8 x i1>, kept
    across blocks as <8 x i16>) with five shuffles at every step (asm of
    gemm_strided, znver3).  One-row kernels (the last rows, a one-row
    prediction) read B in place, masked.

    Called as ``microkernel(kc, A, B, C, ((i, j), (ia, pa), (pb, jb)), m_rows,
    n_valid, accumulate, epi, bias, H, (da, dpa))``: the tiles of rows i to
    i + m_rows (``rows`` at a time, the last one partial) and columns j.. of C
    (and of H, columns j.. of ``bias``), one after another; each sum runs
    over kc terms.  A's element (ia, pa) and B's (pb, jb) begin the first
    tile: (i, p) and (p, j) for operands read in place at K offset p, a
    panel's place in the buffer for packed ones
    (pack_panel, pack_a_panel); each next tile's A begins da rows and dpa
    columns on (MR rows of A read in place, or the next packed micro-panel).
    The origin is applied to the
    whole matrices' pointers here, so the GEMM's loops build no array view
    per tile (with four views a tile, the 33 products of
    ``python -m fastnn.bench.products`` ran at a geometric mean of 0.71-0.74x
    np.dot in float32 on znver3, 0.79x without; the small ones, such as the
    spiral's 300 x 2 x 100, gained most), and the loop over a panel's tiles
    runs here too, so the operands, strides and masks are set up once per
    panel (300 x 2 x 100 float32: 7.0 -> 5.5 us with the edge stores below;
    96 x 16 x 128 as a^T delta: 6.3 -> 5.5 us; znver3).  A may have any strides, B,
    C and H must be contiguous along their rows.  ``bias`` is read only for
    EPI_BIAS*, H only for EPI_RELU_DERIV; their pointers are formed, never
    read, for the other epilogues (any placeholder array will do there).
    """

    b_padded = rows > 1

    @intrinsic
    def microkernel(typingctx, kc, A, B, C, origin, m_rows, n_valid, accumulate, epi, bias,
                    H, a_step):
        sig = types.void(kc, A, B, C, origin, m_rows, n_valid, accumulate, epi, bias, H,
                         a_step)

        def codegen(context, builder, signature, args):
            (kc_v, A_v, B_v, C_v, origin_v, m_rows_v, n_valid_v, acc_v, epi_v, bias_v,
             H_v, a_step_v) = args
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            fty, itemsize, vl, vecty = _vector_type(A.dtype)
            vecptr = vecty.as_pointer()
            c_org, a_org, b_org = cgutils.unpack_tuple(builder, origin_v, 3)
            i0, j0 = cgutils.unpack_tuple(builder, c_org, 2)
            ia0, pa0 = cgutils.unpack_tuple(builder, a_org, 2)
            pb0, jb0 = cgutils.unpack_tuple(builder, b_org, 2)
            da, dpa = cgutils.unpack_tuple(builder, a_step_v, 2)
            a_data, (rs_v, cs_v) = _data_and_strides(context, builder, A, A_v, itemsize)
            b_data, (ldb_v, _) = _data_and_strides(context, builder, B, B_v, itemsize)
            c_data, (ldc_v, _) = _data_and_strides(context, builder, C, C_v, itemsize)
            h_data, (ldh_v, _) = _data_and_strides(context, builder, H, H_v, itemsize)
            bias_data = context.make_array(bias)(context, builder, bias_v).data
            # the first tile's origin in each operand (plain GEPs: a placeholder H
            # or bias gets a pointer that is never dereferenced)
            a_data = builder.gep(a_data, [builder.add(builder.mul(ia0, rs_v),
                                                      builder.mul(pa0, cs_v))])
            b_data = builder.gep(b_data, [builder.add(builder.mul(pb0, ldb_v), jb0)])
            c_data = builder.gep(c_data, [builder.add(builder.mul(i0, ldc_v), j0)])
            h_data = builder.gep(h_data, [builder.add(builder.mul(i0, ldh_v), j0)])
            bias_data = builder.gep(bias_data, [j0])
            # from one tile to the next: A's origin moves by a_step (rows, columns:
            # MR rows of A read in place, or the next packed micro-panel), C's
            # and H's by the tile's rows
            a_next = builder.add(builder.mul(da, rs_v), builder.mul(dpa, cs_v))
            fmuladd = _vector_intrinsic(builder, f"llvm.fmuladd.v{vl}{_suffix(fty)}",
                                        ir.FunctionType(vecty, [vecty, vecty, vecty]))
            mload, mstore = _masked_load_and_store(builder, vecty)
            align = ir.Constant(ir.IntType(32), fty.get_abi_size(context.target_data))
            zero_vec = ir.Constant(vecty, None)
            masks = [None] * nv  # lane masks of the vectors that can cross n_valid
            for v in range(nv):
                if mask == MASK_ALL or (mask == MASK_LAST and v == nv - 1):
                    masks[v] = _lane_mask(builder, builder.sub(n_valid_v, i64(v * vl)), vl)

            def load_vec(ptr, v, masked=True):
                ptr = builder.bitcast(ptr, vecptr)
                if masked and masks[v] is not None:
                    return builder.call(mload, [ptr, align, masks[v], zero_vec])
                return builder.load(ptr, align=align.constant)

            def store_vec(value, ptr, v):
                ptr = builder.bitcast(ptr, vecptr)
                if masks[v] is None:
                    builder.store(value, ptr, align=align.constant)
                elif MASKED_STORES_FAST:
                    builder.call(mstore, [value, ptr, align, masks[v]])
                else:
                    _store_first(builder, value, ptr, builder.sub(n_valid_v, i64(v * vl)),
                                 align.constant)

            # accumulators: allocas in the entry block, promoted to registers by LLVM
            acc = [[cgutils.alloca_once_value(builder, zero_vec) for _ in range(nv)]
                   for _ in range(rows)]
            prefetch = _vector_intrinsic(
                builder, "llvm.prefetch.p0",
                ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] + [i32] * 3))
            add_old = builder.icmp_signed("!=", acc_v, ir.Constant(acc_v.type, 0))

            def emit_tile(a_data, c_data, h_data, m_valid_v):
                """One MR x NV tile: zeroed accumulators, the k loop, the store."""
                for row in acc:
                    for cell in row:
                        builder.store(zero_vec, cell)
                # rows past m_valid re-read the last valid row (same arithmetic,
                # never stored)
                last_row = builder.sub(m_valid_v, i64(1))
                a_rows = []
                for r in range(rows):
                    rr = i64(r)
                    r_eff = builder.select(builder.icmp_signed("<", rr, last_row), rr, last_row)
                    a_rows.append(builder.mul(r_eff, rs_v))
                # C's tile is fetched into cache while the k loop runs: with C
                # bigger than L2 (512 x 1024 float32) the tile's old values came
                # from L3 after the loop, its rows on as many pages, and the tile
                # waited for them (products 0.59-0.67x np.dot without, 0.77-0.86
                # with, znver3).  prefetchw: the lines are about to be written.
                for r in range(rows):
                    c_row = builder.mul(i64(r), ldc_v)
                    for v in range(0, nv * vl, 64 // itemsize):
                        ptr = builder.bitcast(builder.gep(c_data, [builder.add(c_row, i64(v))]),
                                              ir.IntType(8).as_pointer())
                        builder.call(prefetch, [ptr, i32(1), i32(3), i32(1)])
                # the k loop: C_tile += A[:, p] (outer product) B[p, :]
                with _count_loop(builder, i64(0), kc_v, i64(1)) as p:
                    b_row = builder.mul(p, ldb_v)
                    b_vecs = [load_vec(builder.gep(b_data, [builder.add(b_row, i64(v * vl))]),
                                       v, masked=not b_padded)
                              for v in range(nv)]
                    a_col = builder.mul(p, cs_v)
                    for r in range(rows):
                        a_val = builder.load(builder.gep(a_data, [builder.add(a_rows[r], a_col)]))
                        a_vec = _splat(builder, a_val, vecty)
                        for v in range(nv):
                            cur = builder.load(acc[r][v])
                            builder.store(builder.call(fmuladd, [a_vec, b_vecs[v], cur]),
                                          acc[r][v])
                # store the valid rows: C = acc, or C += acc when accumulating,
                # then the epilogue (bias, relu or relu') on the registers.  One
                # branch per tile on epi, to a store sequence made for that epilogue.

                def store_tile(epi):
                    if epi in (EPI_BIAS, EPI_BIAS_RELU):   # the tile's bias, once for all rows
                        bias_vecs = [load_vec(builder.gep(bias_data, [i64(v * vl)]), v)
                                     for v in range(nv)]
                    for r in range(rows):
                        in_range = builder.icmp_signed("<", i64(r), m_valid_v)
                        with builder.if_then(in_range, likely=True):
                            c_row = builder.mul(i64(r), ldc_v)
                            for v in range(nv):
                                ptr = builder.gep(c_data, [builder.add(c_row, i64(v * vl))])
                                with builder.if_then(add_old):
                                    value = builder.load(acc[r][v])
                                    builder.store(builder.fadd(value, load_vec(ptr, v),
                                                               flags=EXACT), acc[r][v])
                                value = builder.load(acc[r][v])
                                if epi in (EPI_BIAS, EPI_BIAS_RELU):
                                    value = builder.fadd(value, bias_vecs[v], flags=EXACT)
                                if epi == EPI_BIAS_RELU:
                                    # max(z, 0) as numba's max: z unless 0 > z (NaN stays)
                                    below = builder.fcmp_ordered("<", value, zero_vec)
                                    value = builder.select(below, zero_vec, value)
                                if epi == EPI_RELU_DERIV:
                                    # relu' from the layer's output a = H: d if a > 0 else 0
                                    h_ptr = builder.gep(h_data, [builder.add(
                                        builder.mul(i64(r), ldh_v), i64(v * vl))])
                                    positive = builder.fcmp_ordered(">", load_vec(h_ptr, v),
                                                                    zero_vec)
                                    value = builder.select(positive, value, zero_vec)
                                store_vec(value, ptr, v)

                done = builder.append_basic_block("tile_stored")
                cases = [builder.append_basic_block(f"store_epi{e}") for e in range(4)]
                switch = builder.switch(epi_v, cases[EPI_NONE])
                for e in range(4):
                    if e != EPI_NONE:
                        switch.add_case(ir.Constant(epi_v.type, e), cases[e])
                for e in range(4):
                    builder.position_at_end(cases[e])
                    store_tile(e)
                    builder.branch(done)
                builder.position_at_end(done)

            # The tiles of rows 0..m_rows, one after another, in one call: the
            # set-up above (operands, strides, masks) is paid once per column of
            # tiles, not once per tile (at the spiral's K = 2 or 3 it was about
            # as much as the tile's own work)
            with _count_loop(builder, i64(0), m_rows_v, i64(rows)) as t:
                a_tile = builder.gep(a_data, [builder.mul(builder.udiv(t, i64(rows)), a_next)])
                c_tile = builder.gep(c_data, [builder.mul(t, ldc_v)])
                h_tile = builder.gep(h_data, [builder.mul(t, ldh_v)])
                m_valid_v = builder.sub(m_rows_v, t)
                m_valid_v = builder.select(builder.icmp_signed("<", m_valid_v, i64(rows)),
                                           m_valid_v, i64(rows))
                emit_tile(a_tile, c_tile, h_tile, m_valid_v)
            return context.get_dummy_value()

        return sig, codegen

    microkernel.__name__ = f"microkernel_{rows}x{nv}_mask{mask}"
    return microkernel


@intrinsic
def pack_panel(typingctx, kc, B, origin, n_valid, P):
    """P[q, :NR] = B[p + q, j:j + NR] for q < kc, origin = (p, j): one panel of B
    (NR = NV vectors wide) copied to contiguous rows, vector by vector.  A
    panel at the right edge (n_valid < NR columns) is read with masked loads
    and its columns from n_valid on are written as zeros, so that the tile
    kernels read it with full vector loads.

    A B read in place with rows 4 kB apart (1024 float32 columns) puts every
    row of a panel in the same L1 set and on its own page: the panel is read
    from L2, through a new TLB entry, at every k step of every tile (512 x
    784 x 1024 ran at 36 GFLOP/s against np.dot's 68 on znver3).  Packed, the
    panel stays in L1 for all the tiles that use it.  (Plain numba loops over
    2-D indices do not vectorise: the negative-index wraparound.)
    """
    sig = types.void(kc, B, origin, n_valid, P)

    def codegen(context, builder, signature, args):
        kc_v, B_v, origin_v, n_valid_v, P_v = args
        i64 = ir.IntType(64)
        _, itemsize, vl, vecty = _vector_type(B.dtype)
        vecptr = vecty.as_pointer()
        align = ir.Constant(ir.IntType(32), itemsize)
        mload, _ = _masked_load_and_store(builder, vecty)
        p0, j0 = cgutils.unpack_tuple(builder, origin_v, 2)
        b_data, (ldb_v, _) = _data_and_strides(context, builder, B, B_v, itemsize)
        p_data, (ldp_v, _) = _data_and_strides(context, builder, P, P_v, itemsize)
        b_data = builder.gep(b_data, [builder.add(builder.mul(p0, ldb_v), j0)])

        def copy_rows(masked):
            masks = [_lane_mask(builder, builder.sub(n_valid_v, i64(v * vl)), vl)
                     for v in range(NV)] if masked else None
            with _count_loop(builder, i64(0), kc_v, i64(1)) as q:
                b_row = builder.mul(q, ldb_v)
                p_row = builder.mul(q, ldp_v)
                for v in range(NV):
                    src = builder.bitcast(
                        builder.gep(b_data, [builder.add(b_row, i64(v * vl))]), vecptr)
                    dst = builder.bitcast(
                        builder.gep(p_data, [builder.add(p_row, i64(v * vl))]), vecptr)
                    if masked:
                        value = builder.call(mload, [src, align, masks[v],
                                                     ir.Constant(vecty, None)])
                    else:
                        value = builder.load(src, align=itemsize)
                    builder.store(value, dst, align=itemsize)

        full = builder.icmp_signed(">=", n_valid_v, i64(NV * vl))
        with builder.if_else(full, likely=True) as (then, otherwise):
            with then:
                copy_rows(False)
            with otherwise:
                copy_rows(True)
        return context.get_dummy_value()

    return sig, codegen


# Vectors of columns summed at once by column_sums_block: each row adds one
# vector to each accumulator, so fewer than the addition's latency (4
# cycles) in loads per row leave the core waiting on the chain: 300 x 100
# float32 took 1.8 us as two blocks of 4 vectors, rocketlake.
SUM_VECTORS = 2 * NV


@intrinsic
def column_sums_block(typingctx, S, j0, n_valid, colsum):
    """colsum[j0 + c] += S[0, j0 + c] + S[1, j0 + c] + ..., for c <
    min(n_valid, SUM_VECTORS x VL): a block of columns of a C-contiguous S,
    summed into SUM_VECTORS vector registers row after row, then stored once.

    Each column's sum is the scalar loop's ``colsum[j] += S[i, j]`` (rows
    in order, one rounded addition each: the same bits), but that loop
    loaded and stored colsum at every row, a store-to-load chain per row
    (the bias gradient of a 300 x 100 delta: 2.1 us, rocketlake).  A block
    at the right edge (n_valid below its width) is read and written with
    masked loads and stores.
    """
    if not (isinstance(S, types.Array) and S.ndim == 2 and S.layout == "C"
            and isinstance(colsum, types.Array) and colsum.ndim == 1 and colsum.layout == "C"):
        return None
    sig = types.void(S, j0, n_valid, colsum)

    def codegen(context, builder, signature, args):
        S_v, j0_v, n_valid_v, c_v = args
        i64 = ir.IntType(64)
        _, itemsize, vl, vecty = _vector_type(S.dtype)
        vecptr = vecty.as_pointer()
        align = ir.Constant(ir.IntType(32), itemsize)
        zero = ir.Constant(vecty, None)
        mload, mstore = _masked_load_and_store(builder, vecty)
        m_v = cgutils.unpack_tuple(builder, context.make_array(S)(context, builder, S_v).shape,
                                   2)[0]
        s_data, (lds_v, _) = _data_and_strides(context, builder, S, S_v, itemsize)
        s_data = builder.gep(s_data, [j0_v])
        c_data = builder.gep(context.make_array(colsum)(context, builder, c_v).data, [j0_v])
        masks = [_lane_mask(builder, builder.sub(n_valid_v, i64(v * vl)), vl)
                 for v in range(SUM_VECTORS)]

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vecptr)

        # accumulators: allocas in the entry block, promoted to registers by LLVM
        acc = [cgutils.alloca_once_value(builder, builder.call(
            mload, [vector_at(c_data, i64(v * vl)), align, masks[v], zero]))
            for v in range(SUM_VECTORS)]

        def add_rows(vectors, masked):
            with _count_loop(builder, i64(0), m_v, i64(1)) as i:
                row = builder.mul(i, lds_v)
                for v in range(vectors):
                    src = vector_at(s_data, builder.add(row, i64(v * vl)))
                    if masked:
                        value = builder.call(mload, [src, align, masks[v], zero])
                    else:
                        value = builder.load(src, align=itemsize)
                    builder.store(builder.fadd(builder.load(acc[v]), value, flags=EXACT),
                                  acc[v])

        # a whole block; a block of one vector at most (an output layer's
        # classes: no loads of lanes that are all past the edge); another edge
        full = builder.icmp_signed(">=", n_valid_v, i64(SUM_VECTORS * vl))
        narrow = builder.icmp_signed("<=", n_valid_v, i64(vl))
        with builder.if_else(full, likely=True) as (then, otherwise):
            with then:
                add_rows(SUM_VECTORS, False)
            with otherwise:
                with builder.if_else(narrow) as (one, several):
                    with one:
                        add_rows(1, True)
                    with several:
                        add_rows(SUM_VECTORS, True)
        for v in range(SUM_VECTORS):
            builder.call(mstore, [builder.load(acc[v]), vector_at(c_data, i64(v * vl)), align,
                                  masks[v]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pack_a_panel(typingctx, kc, A, origin, m_valid, P, row0):
    """P[row0 + q, r] = A[i + min(r, m_valid - 1), p + q] for q < kc, r < MR,
    origin = (i, p): one MR x kc panel of A (a tile's rows) copied to kc
    contiguous rows of MR elements, in the order the micro-kernel reads them.

    A weight gradient reads A = a^T: the tile's MR elements of a step are
    adjacent, but each step is a row of a (kilobytes on), so a tile touched
    kc cache lines for 24 bytes of each; packed, a step is 24 bytes on from
    the last (512 x 784 x 1024, across the runs of that day: 0.62-0.71x
    np.dot in place, 0.82-1.05x packed, znver3).  Rows past m_valid repeat the last valid row, as the micro-kernel
    does, so nothing outside A is read.  The copy is straight-line scalar
    code: about 1 ns an element as a numba loop, much less as this.
    """
    sig = types.void(kc, A, origin, m_valid, P, row0)

    def codegen(context, builder, signature, args):
        kc_v, A_v, origin_v, m_valid_v, P_v, row0_v = args
        i64 = ir.IntType(64)
        itemsize = A.dtype.bitwidth // 8
        i0, p0 = cgutils.unpack_tuple(builder, origin_v, 2)
        a_data, (rs_v, cs_v) = _data_and_strides(context, builder, A, A_v, itemsize)
        p_data, (ldp_v, _) = _data_and_strides(context, builder, P, P_v, itemsize)
        a_data = builder.gep(a_data, [builder.add(builder.mul(i0, rs_v), builder.mul(p0, cs_v))])
        p_data = builder.gep(p_data, [builder.mul(row0_v, ldp_v)])
        last_row = builder.sub(m_valid_v, i64(1))
        a_rows = []
        for r in range(MR):
            r_eff = builder.select(builder.icmp_signed("<", i64(r), last_row), i64(r), last_row)
            a_rows.append(builder.mul(r_eff, rs_v))
        with _count_loop(builder, i64(0), kc_v, i64(1)) as q:
            a_col = builder.mul(q, cs_v)
            p_row = builder.mul(q, ldp_v)
            for r in range(MR):
                value = builder.load(builder.gep(a_data, [builder.add(a_rows[r], a_col)]))
                builder.store(value, builder.gep(p_data, [builder.add(p_row, i64(r))]))
        return context.get_dummy_value()

    return sig, codegen


# Products with at most this many columns of C (and at most half a vector's
# lanes: gemm.py decides) are computed as dot products along K
# instead of register tiles, whose vectors would hold mostly unused lanes.
DOT_COLUMNS = 4
DOT_ROWS = 4    # rows computed together by dot_rows


def _horizontal_sum(builder, value):
    """The lanes of ``value`` added as a fixed tree (halves, then quarters...,
    down to one lane), every addition with the EXACT flags: the same order in
    every compiled copy, whatever fast-math flags the caller has."""
    width = value.type.count
    while width > 1:
        half = width // 2
        low = builder.shuffle_vector(value, value, ir.Constant(
            ir.VectorType(ir.IntType(32), half), list(range(half))))
        high = builder.shuffle_vector(value, value, ir.Constant(
            ir.VectorType(ir.IntType(32), half), list(range(half, width))))
        value = builder.fadd(low, high, flags=EXACT)
        width = half
    return builder.extract_element(value, ir.IntType(32)(0))


@intrinsic
def dot_rows(typingctx, A, BT, C, m, n, k, accumulate, epi, bias):
    """C[r, j] (=, or += when ``accumulate``) sum_{p < k} A[r, p] * BT[j, p]
    for r < m, j < n (1 <= n <= DOT_COLUMNS), plus bias[j] when ``epi`` is
    EPI_BIAS (else EPI_NONE), added as the tiles add it: each element a dot
    product of a row of A and a row of BT, both contiguous along p.

    For products with a few columns of C, such as a classifier's last layer
    (3 classes: 3 of 16 float32 lanes of an AVX-512 register tile, 3 of 8
    float64) or a regression's single output: lane l of one accumulator per column sums
    the terms p = l, l + VL, ... in order (one ``llvm.fmuladd`` each), then
    the lanes are added as a fixed tree (_horizontal_sum).  BT's rows are
    zero-padded to a multiple of VL; A's last piece is read with a masked
    load (zeros past k).  Every row has the same arithmetic, wherever it
    sits in the matrix.  A's rows may have any stride, its columns must be
    adjacent.
    """
    sig = types.void(A, BT, C, m, n, k, accumulate, epi, bias)

    def codegen(context, builder, signature, args):
        A_v, BT_v, C_v, m_v, n_v, k_v, acc_v, epi_v, bias_v = args
        i64 = ir.IntType(64)
        fty, itemsize, vl, vecty = _vector_type(A.dtype)
        vecptr = vecty.as_pointer()
        a_data, (rs_v, _) = _data_and_strides(context, builder, A, A_v, itemsize)
        bt_data, (ldbt_v, _) = _data_and_strides(context, builder, BT, BT_v, itemsize)
        c_data, (ldc_v, _) = _data_and_strides(context, builder, C, C_v, itemsize)
        bias_data = context.make_array(bias)(context, builder, bias_v).data
        fmuladd = _vector_intrinsic(builder, f"llvm.fmuladd.v{vl}{_suffix(fty)}",
                                    ir.FunctionType(vecty, [vecty, vecty, vecty]))
        mload, _ = _masked_load_and_store(builder, vecty)
        align = ir.Constant(ir.IntType(32), itemsize)
        zero_vec = ir.Constant(vecty, None)
        value = cgutils.alloca_once(builder, fty)
        k_full = builder.sub(k_v, builder.srem(k_v, i64(vl)))
        has_tail = builder.icmp_signed("<", k_full, k_v)
        tail_mask = _lane_mask(builder, builder.sub(k_v, k_full), vl)
        add_old = builder.icmp_signed("!=", acc_v, ir.Constant(acc_v.type, 0))
        acc = [[cgutils.alloca_once_value(builder, zero_vec) for _ in range(DOT_COLUMNS)]
               for _ in range(DOT_ROWS)]

        last_row = builder.sub(m_v, i64(1))

        def rows_at(r0, columns, epi):
            """Rows r0 .. r0 + DOT_ROWS - 1, together: DOT_ROWS x ``columns``
            independent sums share each vector of BT (one FMA chain alone
            waits on its own latency).  Rows past the last re-read it and are
            not stored, so every row has the same arithmetic."""
            row_at = [builder.add(r0, i64(i)) for i in range(DOT_ROWS)]
            row_at = [builder.select(builder.icmp_signed("<", r, last_row), r, last_row)
                      for r in row_at]
            a_rows = [builder.gep(a_data, [builder.mul(r, rs_v)]) for r in row_at]
            for i in range(DOT_ROWS):
                for j in range(columns):
                    builder.store(zero_vec, acc[i][j])

            def step(p, load_a):
                b_vecs = [builder.load(builder.bitcast(builder.gep(bt_data, [builder.add(
                    builder.mul(i64(j), ldbt_v), p)]), vecptr), align=itemsize)
                    for j in range(columns)]
                for i in range(DOT_ROWS):
                    a_vec = load_a(builder.bitcast(builder.gep(a_rows[i], [p]), vecptr))
                    for j in range(columns):
                        builder.store(builder.call(fmuladd, [a_vec, b_vecs[j],
                                                             builder.load(acc[i][j])]), acc[i][j])

            with _count_loop(builder, i64(0), k_full, i64(vl)) as p:
                step(p, lambda ptr: builder.load(ptr, align=itemsize))
            with builder.if_then(has_tail):
                step(k_full, lambda ptr: builder.call(mload, [ptr, align, tail_mask, zero_vec]))
            for i in range(DOT_ROWS):
                r = builder.add(r0, i64(i))
                with builder.if_then(builder.icmp_signed("<", r, m_v), likely=True):
                    store_row(acc[i], r, columns, epi)

        def store_row(sums, r, columns, epi):
            """Row r of C from its accumulators: each sum, + old C, + bias."""
            c_row = builder.gep(c_data, [builder.mul(r, ldc_v)])
            for j in range(columns):
                # the sum, + old C, then the epilogue: the tiles' operations
                # in their order (store_tile in _make_microkernel)
                builder.store(_horizontal_sum(builder, builder.load(sums[j])), value)
                c_ptr = builder.gep(c_row, [i64(j)])
                with builder.if_then(add_old):
                    builder.store(builder.fadd(builder.load(value), builder.load(c_ptr),
                                               flags=EXACT), value)
                if epi == EPI_BIAS:
                    b_j = builder.load(builder.gep(bias_data, [i64(j)]))
                    builder.store(builder.fadd(builder.load(value), b_j, flags=EXACT), value)
                builder.store(builder.load(value), c_ptr)

        def rows_of(columns, epi):
            """Every row, DOT_ROWS at a time."""
            with _count_loop(builder, i64(0), m_v, i64(DOT_ROWS)) as r0:
                rows_at(r0, columns, epi)

        # one loop per (columns, epilogue): a switch on both, once per call
        # (only the bias in registers: a classifier's or a regression's last
        # layer; relu and relu' on so few columns are left to gemm's row loops)
        done = builder.append_basic_block("dot_rows_done")
        epilogues = (EPI_NONE, EPI_BIAS)   # codes 0 and 1
        which = builder.add(builder.mul(n_v, i64(len(epilogues))), epi_v)
        switch = builder.switch(which, done)
        for columns in range(1, DOT_COLUMNS + 1):
            for epi in epilogues:
                case = builder.append_basic_block(f"dot_rows_{columns}_epi{epi}")
                switch.add_case(i64(len(epilogues) * columns + epi), case)
                builder.position_at_end(case)
                rows_of(columns, epi)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@contextmanager
def _count_loop(builder, start, stop, step):
    """``for p in range(start, stop, step)`` in IR (step > 0), yielding p, with
    LLVM's unroller told to leave the loop alone.  Unrolled, the 6-row AVX2
    tile's k loop ran out of general registers (six A row pointers per copy):
    LLVM rotated them through a dozen moves and stack slots per iteration,
    and the tile ran at about half its FMA rate (asm of gemm_strided, znver3)."""
    i64 = ir.IntType(64)
    pre = builder.basic_block
    cond = builder.append_basic_block("loop.cond")
    body = builder.append_basic_block("loop.body")
    end = builder.append_basic_block("loop.end")
    builder.branch(cond)
    builder.position_at_end(cond)
    p = builder.phi(i64, name="p")
    p.add_incoming(start, pre)
    builder.cbranch(builder.icmp_signed("<", p, stop), body, end)
    builder.position_at_end(body)
    yield p
    p.add_incoming(builder.add(p, step), builder.basic_block)
    latch = builder.branch(cond)
    latch.set_metadata("llvm.loop", _no_unroll(builder.module))
    builder.position_at_end(end)


def _no_unroll(module):
    """A loop ID (self-referential, as LLVM requires) with unroll.disable."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = ir.values.MDValue(module, [disable], name=str(len(module.metadata)))
    loop_id.operands = (loop_id, disable)
    return loop_id


def _data_and_strides(context, builder, arrty, value, itemsize):
    """(pointer to element [0, 0], (row stride, column stride) in elements)."""
    ary = context.make_array(arrty)(context, builder, value)
    strides = cgutils.unpack_tuple(builder, ary.strides, 2)
    shift = ir.Constant(ir.IntType(64), itemsize.bit_length() - 1)
    return ary.data, tuple(builder.ashr(s, shift) for s in strides)


def _suffix(fty):
    return "f32" if isinstance(fty, ir.FloatType) else "f64"


# The variants the GEMM uses.  Tiles of MR rows: full, and at the right edge
# one vector wide with the last lanes masked (an output layer of up to VL
# classes) or NV vectors wide with every vector masked (any other edge; a
# variant per width would cost first-run compile time).  The last few rows
# of a matrix (and a one-row prediction) go through one-row kernels:
# ROW_VECTORS vectors wide where the columns allow (many independent
# accumulators hide the FMA latency that a single row exposes), then NV
# vectors, then the same two edge kernels.
ROW_VECTORS = 4 * NV
tile_full = _make_microkernel(MR, NV, MASK_NONE)
tile_edge1 = _make_microkernel(MR, 1, MASK_LAST)
tile_edge = _make_microkernel(MR, NV, MASK_ALL)
row_wide = _make_microkernel(1, ROW_VECTORS, MASK_NONE)
row_full = _make_microkernel(1, NV, MASK_NONE)
row_edge1 = _make_microkernel(1, 1, MASK_LAST)
row_edge = _make_microkernel(1, NV, MASK_ALL)
