"""Sparse-input benchmarks (issue 11): one training step with the sparse first
layer through the public API, and its two sparse products alone.

The data is text-like CSR (Zipf-like columns, unit rows, as
fastnn.bench.sparse's): 200 rows x 20000 features at 0.2 % density (40 stored values a row),
network 20000-64-5.  A step is Trainer.fit for one epoch of exactly one
batch; STEPS of them per timed call.  Compilation happens in setup.  Skips
(NotImplementedError in setup) on a commit without sparse support.
"""
import numpy as np

ROWS, FEATURES, DENSITY, HIDDEN = 200, 20000, 0.002, 64
STEPS = 5


def _data():
    """(X as fastnn.sparse.SparseRows, y, kernels module): text-like rows (a few
    frequent columns, a long tail), unit length, made with NumPy alone (the
    asv environment has no scipy)."""
    try:
        from fastnn.kernels import sparse as K
        from fastnn.sparse import SparseRows
    except ImportError:
        raise NotImplementedError("no sparse support in this commit")
    rng = np.random.default_rng(0)
    per_row = int(DENSITY * FEATURES)
    p = 1.0 / (np.arange(FEATURES) + 10.0)
    p /= p.sum()
    perm = rng.permutation(FEATURES)
    indices = np.concatenate([np.sort(perm[rng.choice(FEATURES, per_row, replace=False, p=p)])
                              for _ in range(ROWS)]).astype(np.int32)
    data = rng.random(ROWS * per_row) + 0.1
    data /= np.repeat(np.sqrt(np.add.reduceat(data ** 2, np.arange(0, data.size, per_row))),
                      per_row)
    indptr = np.arange(0, ROWS * per_row + 1, per_row, dtype=np.int64)
    X = SparseRows(data.astype(np.float32), indices, indptr, (ROWS, FEATURES))
    y = rng.integers(0, 5, ROWS)
    return X, y, K


class SparseStep:
    """time_sparse_step: STEPS training steps (adam, batch 200) on the CSR batch."""

    timeout = 300

    def setup(self):
        import fastnn
        X, y, _ = _data()
        self.net = fastnn.Network([FEATURES, HIDDEN, 5], dtype="float32", seed=0)
        self.trainer = fastnn.Trainer(self.net, optimizer=fastnn.Adam(lr=1e-3),
                                      batch_size=ROWS, shuffle=False)
        self.X, self.y = X, y
        self.trainer.fit(X, y, epochs=1)   # compile

    def time_sparse_step(self):
        for _ in range(STEPS):
            self.trainer.fit(self.X, self.y, epochs=1)


class SparseProducts:
    """The first layer's products alone: z = X W (+ bias, relu) and dW = X^T delta."""

    timeout = 300

    def setup(self):
        from fastnn.sparse import make_sparse_work
        X, _, K = _data()
        self.K = K
        Xs = X
        rng = np.random.default_rng(0)
        self.X = Xs.bundle()
        self.W = rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32)
        self.b = np.zeros(HIDDEN, np.float32)
        self.Z = np.empty((ROWS, HIDDEN), np.float32)
        self.delta = rng.normal(size=(ROWS, HIDDEN)).astype(np.float32)
        self.dW = np.empty((FEATURES, HIDDEN), np.float32)
        self.sw = make_sparse_work(FEATURES, Xs.nnz, Xs.dtype)
        self.relu = np.int64(1)
        K.product_sparse_forward(self.X, self.W, self.b, self.relu, self.Z)
        K.product_sparse_weight_grad(self.X, self.delta, self.sw, self.dW)

    def time_sparse_forward(self):
        self.K.product_sparse_forward(self.X, self.W, self.b, self.relu, self.Z)

    def time_sparse_weight_grad(self):
        self.K.product_sparse_weight_grad(self.X, self.delta, self.sw, self.dW)
