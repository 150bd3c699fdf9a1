"""Loop-level matrix products: the three shapes that training needs.

With rows as samples, a dense layer with weights ``W`` (k x n) needs

* ``gemm_nn``     C  = A W      forward:   z = a W           (m x k)(k x n)
* ``gemm_tn_acc`` G += A^T D    gradient:  dW += a^T delta   (k x m)(m x n)
* ``gemm_nt``     C  = D W^T    backward:  dA = delta W^T    (m x n)(n x k)

All operands are C-contiguous 2-D arrays of one float dtype.  The inner loop of
every product runs over a contiguous axis so that LLVM vectorises it: along the
output row for ``nn`` and ``tn`` (a broadcast times a row, accumulated into a
row), along the shared axis for ``nt`` (a dot product, which vectorises because
the package's fastmath flags allow reassociation).  No BLAS is called.
"""
from .._jit import jit

# Rows of A handled together: each row of B (or D) loaded from cache is used
# for this many output rows before it is evicted.
ROW_BLOCK = 4
# Columns of the output handled per pass, so that ROW_BLOCK output row pieces
# stay in L1 while the shared dimension is swept.
COL_BLOCK = 256


@jit
def gemm_nn(A, B, C):
    """C = A @ B for A (m x k), B (k x n), C (m x n); C is overwritten."""
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
    """G += A.T @ D for A (m x k), D (m x n), G (k x n): a sum over the m rows."""
    m, k = A.shape
    n = D.shape[1]
    for j0 in range(0, n, COL_BLOCK):
        j1 = min(n, j0 + COL_BLOCK)
        for p in range(k):
            g_row = G[p]
            for i in range(m):
                a_ip = A[i, p]
                d_row = D[i]
                for j in range(j0, j1):
                    g_row[j] += a_ip * d_row[j]


@jit
def gemm_nt(D, W, C):
    """C = D @ W.T for D (m x n), W (k x n), C (m x k); C is overwritten."""
    m, n = D.shape
    k = W.shape[0]
    zero = C.dtype.type(0)
    for i in range(m):
        d_row = D[i]
        for p in range(k):
            w_row = W[p]
            acc = zero
            for j in range(n):
                acc += d_row[j] * w_row[j]
            C[i, p] = acc
