"""Sparse input (scipy.sparse matrices and arrays) for training and prediction.

A sparse X is checked and converted once, at the API, into :class:`SparseRows`:
CSR with sorted column indices and no duplicates, ``data`` in the network's
dtype, ``indices`` int32 and ``indptr`` int64 -- the layout of the compiled
kernels (kernels/sparse.py).  CSR and CSC input, and the other scipy formats
(COO, LIL, DOK, BSR, DIA), are converted by scipy's ``tocsr``; that
conversion (and the dtype cast) is the only copy made of X.  Nothing here or
in the kernels makes a dense matrix of X or of a mini-batch.

The kernels are imported (and so compiled) only when sparse data is used:
a dense fit never loads them.
"""
import numpy as np

from ._validation import check_samples_shape


def is_sparse(X):
    """True for checked sparse data (:class:`SparseRows`)."""
    return isinstance(X, SparseRows)


def is_sparse_input(X):
    """True for X that the API converts with :func:`as_sparse_rows`: a
    scipy.sparse matrix or array (told by its attributes, without importing
    scipy), or SparseRows."""
    return isinstance(X, SparseRows) or (hasattr(X, "nnz") and (
        hasattr(X, "tocsr") or hasattr(X, "toarray")))


def batch_matrix_columns(X):
    """Columns of the dense batch matrix (Work.Xb) a step over X needs: X's,
    or 0 for sparse X, whose rows the sparse step reads in place."""
    return 0 if is_sparse(X) else X.shape[1]


class SparseRows:
    """X in canonical CSR, checked: what the trainer and the network take.

    Attributes ``data`` (dtype), ``indices`` (int32), ``indptr`` (int64),
    ``shape``, ``dtype``; ``X[rows]`` selects rows (an int array) as a new
    SparseRows (the estimators' early-stopping split).
    """

    def __init__(self, data, indices, indptr, shape):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = data.dtype

    @property
    def nnz(self):
        """Number of stored values."""
        return int(self.data.shape[0])

    @property
    def ndim(self):
        return 2

    def row_counts(self):
        """Stored values per row (int64)."""
        return np.diff(self.indptr)

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64)
        counts = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        # position p of the result reads self's value at starts[row of p] + (p - indptr[row of p])
        starts = np.repeat(self.indptr[rows] - indptr[:-1], counts)
        src = starts + np.arange(indptr[-1], dtype=np.int64)
        return SparseRows(self.data[src], self.indices[src], indptr, (rows.shape[0], self.shape[1]))

    def bundle(self):
        """The kernels' CSR bundle (kernels.sparse.CSR)."""
        from .kernels.sparse import CSR
        return CSR(self.data, self.indices, self.indptr)

    def toarray(self):
        """A dense copy (tests; never used by training or prediction)."""
        out = np.zeros(self.shape, dtype=self.dtype)
        rows = np.repeat(np.arange(self.shape[0]), self.row_counts())
        out[rows, self.indices] = self.data
        return out

    def fingerprint_arrays(self):
        """The arrays that identify the data (checkpoint fingerprints)."""
        return (self.data, self.indices, self.indptr)

    def __repr__(self):
        return f"SparseRows(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype.name})"


def as_sparse_rows(X, name, dtype, n_features=None):
    """A scipy.sparse X as :class:`SparseRows` of ``dtype``; ValueError naming
    ``name`` for NaN/inf among the stored values, empty or wrongly shaped input,
    TypeError for non-numeric data."""
    if isinstance(X, SparseRows):
        if X.dtype != dtype:
            X = SparseRows(X.data.astype(dtype), X.indices, X.indptr, X.shape)
        A = None
    else:
        fmt = getattr(X, "format", "?")
        try:
            A = X.tocsr()
        except Exception as exc:
            raise TypeError(f"{name} is a sparse matrix of format {fmt!r} that could not be "
                            f"converted to CSR: {exc}") from None
        if A is X:   # tocsr returns a CSR input itself: never change the caller's matrix
            A = A.copy()
    if A is not None:
        if A.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers; got a sparse matrix of dtype {A.dtype}")
        if A.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples x features); got shape {A.shape}")
        A.sum_duplicates()   # sorted indices, one value per position (scipy's canonical form)
        if A.shape[1] >= 2 ** 31:
            raise ValueError(f"{name} has {A.shape[1]} features; at most 2**31 - 1 supported")
        data = np.ascontiguousarray(A.data, dtype=dtype)
        if data is A.data and not data.flags.writeable:
            data = data.copy()
        X = SparseRows(data, np.ascontiguousarray(A.indices, dtype=np.int32),
                       np.ascontiguousarray(A.indptr, dtype=np.int64), A.shape)
    check_samples_shape(X.shape, name, n_features)
    if not np.isfinite(X.data).all():
        raise ValueError(f"{name} (sparse) contains NaN or infinity among its stored values "
                         f"(or values too large for {np.dtype(dtype).name})")
    return X


def make_sparse_work(n_features, capacity, dtype):
    """Buffers of the batch transpose (kernels.sparse.SparseWork), for batches
    holding up to ``capacity`` stored values of ``dtype``; made once per fit."""
    from .kernels.sparse import SparseWork
    return SparseWork(col_ptr=np.empty(n_features + 1, dtype=np.int64),
                      col_fill=np.empty(n_features, dtype=np.int64),
                      t_rows=np.empty(max(1, capacity), dtype=np.int64),
                      t_vals=np.empty(max(1, capacity), dtype=dtype))


def batch_capacity(X, batch_size):
    """The most stored values any batch of ``batch_size`` rows of X can hold."""
    counts = X.row_counts()
    if batch_size >= counts.shape[0]:
        return int(counts.sum())
    return int(np.partition(counts, counts.shape[0] - batch_size)[-batch_size:].sum())


# ---------------------------------------------------------------- the hooks
# The Trainer, Network and FullBatchObjective call these for SparseRows input
# (one line each on their side); everything sparse-specific stays here.

# Rows per parallel pass in prediction: the pass's workspace holds every
# layer's outputs for this many rows (256 hidden units, float32: 1 MB).
PREDICT_CHUNK = 1024


def forward(network, X):
    """Network outputs for the rows of X (SparseRows), as Network._forward_checked:
    the sparse step's PREDICT pass over chunks of PREDICT_CHUNK rows."""
    from ._parallel import parallel_region
    from .kernels.sparse import PREDICT, SparseBatch, sparse_step_pass
    from .network import SERIAL_PREDICT_ROWS
    n = X.shape[0]
    n_out = network.sizes[-1]
    out = np.empty((n, n_out), dtype=network.dtype)
    work, sw, update = _predict_work(network, min(n, PREDICT_CHUNK))
    rows = np.arange(n, dtype=np.int64)
    net = network._bundle()
    last = work.act_off[-1]
    one = network.dtype.type(1)
    with parallel_region(serial=n <= SERIAL_PREDICT_ROWS) as threads:
        threads = np.int64(threads)
        for r0 in range(0, n, PREDICT_CHUNK):
            r1 = min(n, r0 + PREDICT_CHUNK)
            batch = SparseBatch(X.data, X.indices, X.indptr, work.Tb, work.wb, rows[r0:r1], one)
            sparse_step_pass(PREDICT, net, batch, work, sw, update, threads)
            out[r0:r1] = work.act_ws[last:last + (r1 - r0) * n_out].reshape(r1 - r0, n_out)
    return out


def _predict_work(network, rows):
    """(Work, SparseWork, Update) for the PREDICT pass over up to ``rows`` rows,
    made once per network and Python thread (as Network._predict_workspace);
    the SparseWork and Update are placeholders of the training call's types."""
    from .kernels.step import Update, no_keep
    from .trainer import make_workspace
    local = network.__dict__.get("_predict_local")
    if local is None:
        import threading
        local = network.__dict__.setdefault("_predict_local", threading.local())
    cached = getattr(local, "sparse", None)
    if cached is None or cached[0] < rows:
        dt = network.dtype.type
        work = make_workspace(network, rows, 0, network.sizes[-1])
        sw = make_sparse_work(0, 1, network.dtype)
        p = network.params
        update = Update(p, p, np.int64(0), dt(0), dt(0), dt(0), dt(0), dt(0), dt(0), False,
                        *no_keep(network.dtype), False, False)
        cached = local.sparse = (rows, work, sw, update)
    return cached[1:]


def _work(owner, X, batch_size):
    """The batch-transpose buffers for X and batch_size, kept on ``owner``
    (a Trainer or FullBatchObjective) and made again only when too small."""
    capacity = batch_capacity(X, batch_size)
    sw = getattr(owner, "_sparse_work", None)
    if (sw is None or sw.col_fill.shape[0] != X.shape[1] or sw.t_rows.shape[0] < capacity
            or sw.t_vals.dtype != X.dtype):
        sw = make_sparse_work(X.shape[1], capacity, X.dtype)
        owner._sparse_work = sw
    return sw


def train_epoch(trainer, X, T, w, order, batch, ws, update, threads):
    """One epoch of the sparse step (kernels.sparse.sparse_train_epoch) for
    Trainer.run_epoch; returns what kernels.step.train_epoch returns."""
    from .kernels.sparse import sparse_train_epoch
    sw = _work(trainer, X, batch)
    return sparse_train_epoch(trainer.network._bundle(), X.bundle(), T, w, order,
                              np.int64(batch), ws, sw, update, np.int64(trainer.steps), threads)


def loss_gradient(objective, threads):
    """kernels.sparse.sparse_loss_gradient for a FullBatchObjective over SparseRows."""
    from .kernels.sparse import sparse_loss_gradient
    X = objective.X
    sw = _work(objective, X, X.shape[0])
    order = getattr(objective, "_sparse_order", None)
    if order is None or order.shape[0] != X.shape[0]:
        order = objective._sparse_order = np.arange(X.shape[0], dtype=np.int64)
    return sparse_loss_gradient(objective.network._bundle(), X.bundle(), objective.T,
                                objective.w, order, objective.work, sw, objective.l2, threads)
