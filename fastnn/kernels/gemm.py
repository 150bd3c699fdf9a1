"""Loop-level matrix products: the three shapes that training needs.

With rows as samples, a dense layer with weights W (k x n) needs

    forward   z  = a W           (m x k)(k x n)
    gradient  dW += a^T delta    (k x m)(m x n), a sum over the batch rows
    backward  dA = delta W^T     (m x n)(n x k)

All three are done by one kernel, ``gemm_abt`` (C = A B^T, both operands
contiguous along the summed axis K), after packing (transposing) whichever
operand is not already laid out that way.  ``product_forward``,
``product_weight_grad`` and ``product_backward`` at the end of this module are
exactly those three products with their packing, for tests and benchmarks;
the training step (step.py) does the same calls with the elementwise work
fused into them.  Prediction uses ``gemm_nn``, a plain row-streaming z = a W
in which every output element is summed in the same order whatever its row's
position, so a sample's prediction does not depend on the other rows of the
batch (scikit-learn's sample-order check; the tile and edge paths of
``gemm_abt`` round differently).  No BLAS is called.
"""
import numpy as np

from .._jit import jit
from .activations import add_bias_activate, scale_by_derivative

# Columns of the output handled per pass of gemm_nn, so that ROW_BLOCK output
# row pieces stay in L1 while the shared dimension is swept; ROW_BLOCK rows of A
# share each row of B loaded from cache.
ROW_BLOCK = 4
COL_BLOCK = 256


@jit
def gemm_nn(A, B, C):
    """C = A @ B for A (m x k), B (k x n), C (m x n); C is overwritten.

    The inner loop runs along a row of B and C (vectorised across j, no
    reduction), so C[i, j] is summed over p in order 0..k-1 for every i.
    """
    m, k = A.shape
    n = B.shape[1]
    zero = C.dtype.type(0)
    for i in range(m):
        for j in range(n):
            C[i, j] = zero
    for j0 in range(0, n, COL_BLOCK):
        j1 = min(n, j0 + COL_BLOCK)
        for i0 in range(0, m, ROW_BLOCK):
            i1 = min(m, i0 + ROW_BLOCK)
            for p in range(k):
                b_row = B[p]
                for i in range(i0, i1):
                    a_ip = A[i, p]
                    c_row = C[i]
                    for j in range(j0, j1):
                        c_row[j] += a_ip * b_row[j]


@jit
def gemm_tn_acc(A, D, G):
    """G += A^T D for A (m x k), D (m x n), G (k x n): the weight gradient
    summed row-streaming, for shards of few rows.

    For each row p of G, eight rows of D at a time are scaled by A[i, p] and
    added along the contiguous n axis (vectorised across j, no reduction), so
    the row of G stays in L1 while the m rows stream past.  With few rows (a
    32-row shard) this beats transposing both operands for gemm_abt, whose dot
    products along K = m are then too short (measured at 1 thread,
    32 x 784 x 256: 82 against 36 GFLOP/s; at 128 rows gemm_abt wins, 69
    against 50-60): see ROW_STREAM_MAX_ROWS in step.py.
    """
    m, k = A.shape
    n = D.shape[1]
    m8 = m - m % 8
    for p in range(k):
        g = G[p]
        for i in range(0, m8, 8):
            x0 = A[i, p]
            x1 = A[i + 1, p]
            x2 = A[i + 2, p]
            x3 = A[i + 3, p]
            x4 = A[i + 4, p]
            x5 = A[i + 5, p]
            x6 = A[i + 6, p]
            x7 = A[i + 7, p]
            d0 = D[i]
            d1 = D[i + 1]
            d2 = D[i + 2]
            d3 = D[i + 3]
            d4 = D[i + 4]
            d5 = D[i + 5]
            d6 = D[i + 6]
            d7 = D[i + 7]
            for j in range(n):
                g[j] += ((x0 * d0[j] + x1 * d1[j] + x2 * d2[j] + x3 * d3[j])
                         + (x4 * d4[j] + x5 * d5[j] + x6 * d6[j] + x7 * d7[j]))
        for i in range(m8, m):
            x0 = A[i, p]
            d0 = D[i]
            for j in range(n):
                g[j] += x0 * d0[j]


@jit
def column_sums_acc(S, colsum):
    """colsum[j] += sum_i S[i, j] (the bias gradient from delta), rows in order."""
    m, n = S.shape
    for j in range(n):
        acc = colsum.dtype.type(0)
        for i in range(m):
            acc += S[i, j]
        colsum[j] += acc


# ---------------------------------------------------------------------------
# Packed, cache-blocked products with a register tile (used by the training step)
#
# One kernel, ``gemm_abt``, computes C = A B^T where both A (M x K) and B^T
# (N x K) have rows contiguous along the shared dimension K.  Each 8x4 tile of C
# is held in 32 scalar accumulators; every accumulator is a dot product along
# the contiguous K, which LLVM's loop vectoriser turns into vector FMAs (the SLP
# vectoriser, which would vectorise across accumulators, is off in numba).  K is
# cut into blocks of KC so that the panel of B^T swept by every row tile stays
# in L2 while the 8 rows of A stay in L1.
#
# The three training products map onto it by packing (transposing) operands:
#   forward   z  = a W        -> gemm_abt(a, W^T, z)     W^T packed once per step
#   gradient  dW += a^T delta -> gemm_abt(a^T, delta^T, dW)  a, delta transposed
#   backward  dA = delta W^T  -> gemm_abt(delta, W, dA)  no packing needed
# and the epilogue, run on each 8-row strip of C right after its last K block
# (while the strip is in L1), does the elementwise work that would otherwise
# be another pass over C in memory (applying it per element inside the tile
# was tried first: the branchy epilogue code around the 32 live accumulators
# made the whole kernel about 10x slower, so it runs per strip instead):
#   EPI_STORE      C = acc           (or C += acc with ``accumulate``)
#   EPI_BIAS_ACT   C = h(acc + b)    forward: bias and activation
#   EPI_DERIV      C = acc * h'(H)   backward: derivative from the outputs H
# ---------------------------------------------------------------------------
EPI_STORE = 0
EPI_BIAS_ACT = 1
EPI_DERIV = 2

MR = 8      # rows of the register tile
NR = 4      # columns of the register tile
KC = 512    # K block: an N x KC panel of B^T (2 MB float32 at N = 1024) stays in L2


@jit(inline="always")  # numba-level inlining: no call or refcount per element
def _emit(C, i, j, v, add):
    """Store one element of the tile: C[i, j] = v, or += v for later K blocks."""
    if add:
        v += C[i, j]
    C[i, j] = v


@jit
def _epilogue_rows(C, i0, i1, mode, code, bias, H):
    """The fused elementwise step on rows i0:i1 of C, run right after the last K
    block of those rows was stored, while they are still in L1:
    EPI_BIAS_ACT: C = h(C + b);  EPI_DERIV: C = C * h'(H)."""
    if mode == EPI_BIAS_ACT:
        add_bias_activate(C[i0:i1], bias, code)
    elif mode == EPI_DERIV:
        scale_by_derivative(C[i0:i1], H[i0:i1], code)


@jit(inline="always")  # numba-level inlining: no call or refcount per element
def _emit4(C, i, j, v0, v1, v2, v3, add):
    """Store a row of 4 elements of a tile (see _emit)."""
    _emit(C, i, j, v0, add)
    _emit(C, i, j + 1, v1, add)
    _emit(C, i, j + 2, v2, add)
    _emit(C, i, j + 3, v3, add)


@jit(inline="always")  # numba-level inlining: no call or refcount per element
def _dot(a, b, k0, k1):
    """sum_p a[p] b[p] over p in [k0, k1) (unsigned): the 1x1 edge tile."""
    acc = a.dtype.type(0)
    for p in range(k0, k1):
        acc += a[p] * b[p]
    return acc


@jit
def _block(A, BT, C, i_lo, i_hi, k0, k1, add):
    """Rows i_lo:i_hi of C for the K block [k0, k1): 8x4 tiles, then the edges."""
    N = C.shape[1]
    zero = C.dtype.type(0)
    n_full = N - N % NR
    # unsigned indices: numba then omits its negative-index wraparound check,
    # which would otherwise turn the contiguous loads into gathers
    ku0 = np.uint64(k0)
    ku1 = np.uint64(k1)
    for i in range(i_lo, i_hi - MR + 1, MR):
        a0 = A[i + 0]
        a1 = A[i + 1]
        a2 = A[i + 2]
        a3 = A[i + 3]
        a4 = A[i + 4]
        a5 = A[i + 5]
        a6 = A[i + 6]
        a7 = A[i + 7]
        for j in range(0, n_full, NR):
            b0 = BT[j + 0]
            b1 = BT[j + 1]
            b2 = BT[j + 2]
            b3 = BT[j + 3]
            # the 8x4 register tile of C: one scalar accumulator per element, each
            # a reduction along p, which LLVM turns into one vector register each
            c00 = c01 = c02 = c03 = zero
            c10 = c11 = c12 = c13 = zero
            c20 = c21 = c22 = c23 = zero
            c30 = c31 = c32 = c33 = zero
            c40 = c41 = c42 = c43 = zero
            c50 = c51 = c52 = c53 = zero
            c60 = c61 = c62 = c63 = zero
            c70 = c71 = c72 = c73 = zero
            for p in range(ku0, ku1):
                x0, x1, x2, x3 = a0[p], a1[p], a2[p], a3[p]
                x4, x5, x6, x7 = a4[p], a5[p], a6[p], a7[p]
                y0, y1, y2, y3 = b0[p], b1[p], b2[p], b3[p]
                c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3
                c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3
                c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3
                c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3
                c40 += x4 * y0; c41 += x4 * y1; c42 += x4 * y2; c43 += x4 * y3
                c50 += x5 * y0; c51 += x5 * y1; c52 += x5 * y2; c53 += x5 * y3
                c60 += x6 * y0; c61 += x6 * y1; c62 += x6 * y2; c63 += x6 * y3
                c70 += x7 * y0; c71 += x7 * y1; c72 += x7 * y2; c73 += x7 * y3
            _emit4(C, i + 0, j, c00, c01, c02, c03, add)
            _emit4(C, i + 1, j, c10, c11, c12, c13, add)
            _emit4(C, i + 2, j, c20, c21, c22, c23, add)
            _emit4(C, i + 3, j, c30, c31, c32, c33, add)
            _emit4(C, i + 4, j, c40, c41, c42, c43, add)
            _emit4(C, i + 5, j, c50, c51, c52, c53, add)
            _emit4(C, i + 6, j, c60, c61, c62, c63, add)
            _emit4(C, i + 7, j, c70, c71, c72, c73, add)
        # column edge (N % 4 columns): 8x1 tiles
        for j in range(n_full, N):
            b0 = BT[j]
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = zero
            for p in range(ku0, ku1):
                y = b0[p]
                c0 += a0[p] * y; c1 += a1[p] * y; c2 += a2[p] * y; c3 += a3[p] * y
                c4 += a4[p] * y; c5 += a5[p] * y; c6 += a6[p] * y; c7 += a7[p] * y
            _emit(C, i, j, c0, add)
            _emit(C, i + 1, j, c1, add)
            _emit(C, i + 2, j, c2, add)
            _emit(C, i + 3, j, c3, add)
            _emit(C, i + 4, j, c4, add)
            _emit(C, i + 5, j, c5, add)
            _emit(C, i + 6, j, c6, add)
            _emit(C, i + 7, j, c7, add)
    # row edge ((i_hi - i_lo) % 8 rows): 1x4 tiles, then 1x1
    for i in range(i_hi - (i_hi - i_lo) % MR, i_hi):
        a0 = A[i]
        for j in range(0, n_full, NR):
            b0 = BT[j]
            b1 = BT[j + 1]
            b2 = BT[j + 2]
            b3 = BT[j + 3]
            c0 = c1 = c2 = c3 = zero
            for p in range(ku0, ku1):
                x = a0[p]
                c0 += x * b0[p]; c1 += x * b1[p]; c2 += x * b2[p]; c3 += x * b3[p]
            _emit4(C, i, j, c0, c1, c2, c3, add)
        for j in range(n_full, N):
            _emit(C, i, j, _dot(a0, BT[j], ku0, ku1), add)


@jit
def gemm_abt(A, BT, C, K, accumulate, mode, code, bias, H):
    """C (=, or += when ``accumulate``) A[:, :K] @ BT[:, :K].T, then the epilogue.

    A (M x >=K), BT (N x >=K) and C (M x N) are C-contiguous; only the first K
    entries of each row of A and BT are read, so workspaces with a longer row
    can be reused for shorter batches.  ``mode`` is EPI_STORE, EPI_BIAS_ACT
    (bias[j] and activation ``code``) or EPI_DERIV (times h'(H[i, j]) for the
    activation ``code``).  K == 0 gives the epilogue applied to zero (or C).
    """
    M, N = C.shape
    if K == 0:  # an empty sum: C = 0 (or unchanged), then the epilogue
        if not accumulate:
            for i in range(M):
                for j in range(N):
                    C[i, j] = C.dtype.type(0)
        _epilogue_rows(C, np.int64(0), M, mode, code, bias, H)
        return
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        last = k1 == K
        for i0 in range(0, M, MR):
            i1 = min(M, i0 + MR)
            _block(A, BT, C, i0, i1, k0, k1, accumulate != 0 or k0 > 0)
            if last and mode != EPI_STORE:
                _epilogue_rows(C, i0, i1, mode, code, bias, H)


@jit
def pack_transpose(S, D, m, n):
    """D[:n, :m] = S[:m, :n].T  (packing for the dW product and the forward's W^T).

    Blocked 16x16 so that both the reads and the writes stay in cache lines.
    """
    for i0 in range(0, m, 16):
        i1 = min(m, i0 + 16)
        for j0 in range(0, n, 16):
            j1 = min(n, j0 + 16)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    D[j, i] = S[i, j]


@jit
def pack_transpose_colsum(S, D, m, n, colsum):
    """D[:n, :m] = S[:m, :n].T and colsum[j] += sum_i S[i, j]  (delta^T and the
    bias gradient in one pass over delta)."""
    pack_transpose(S, D, m, n)
    for j in range(n):
        row = D[j]
        acc = colsum.dtype.type(0)
        for i in range(m):
            acc += row[i]
        colsum[j] += acc


# The three training products as the step performs them, packing included.
# Flags are typed int64 values, not literals (one compiled copy of gemm_abt).
_ZERO = np.int64(0)
_ONE = np.int64(1)


@jit
def product_forward(a, W, WT, z):
    """z = a W, with W (k x n) packed into WT (n x k) first."""
    k, n = W.shape
    pack_transpose(W, WT, k, n)
    gemm_abt(a, WT, z, k, _ZERO, np.int64(EPI_STORE), _ZERO, z[0], z)


@jit
def product_weight_grad(a, d, aT, dT, G):
    """G += a^T d, with a (m x k) and d (m x n) packed into aT (k x m), dT (n x m)."""
    m, k = a.shape
    n = d.shape[1]
    pack_transpose(a, aT, m, k)
    pack_transpose(d, dT, m, n)
    gemm_abt(aT, dT, G, m, _ONE, np.int64(EPI_STORE), _ZERO, G[0], G)


@jit
def product_backward(d, W, out):
    """out = d W^T: W (k x n) is already contiguous along the summed axis n."""
    gemm_abt(d, W, out, W.shape[1], _ZERO, np.int64(EPI_STORE), _ZERO, out[0], out)
