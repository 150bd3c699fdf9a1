"""Sparse input: the sparse first-layer kernels, the sparse training step
against the dense one, the estimators on scipy.sparse data, bad input, memory."""
import tracemalloc
import warnings

import numba
import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from fastnn import MLPClassifier, MLPRegressor, Network, Trainer  # noqa: E402
from fastnn.kernels import sparse as K  # noqa: E402
from fastnn.kernels.activations import IDENTITY, RELU, TANH  # noqa: E402
from fastnn.sparse import SparseRows, as_sparse_rows, make_sparse_work  # noqa: E402

from .conftest import central_difference  # noqa: E402

try:
    from sklearn.exceptions import ConvergenceWarning
except ImportError:  # pragma: no cover
    ConvergenceWarning = UserWarning


def _random_csr(rng, n, k, density, empty_rows=(), empty_cols=()):
    """A CSR matrix with values in [-2, 2], some rows / columns forced empty."""
    A = sp.random(n, k, density=density, random_state=int(rng.integers(1 << 30)),
                  format="lil", dtype=np.float64)
    for i in empty_rows:
        A[i, :] = 0
    for j in empty_cols:
        A[:, j] = 0
    A = A.tocsr()
    A.data = 4 * A.data - 2
    A.eliminate_zeros()
    return A


SHAPES = [  # (rows, features, density, empty rows, empty columns)
    (1, 7, 0.5, (), ()),                  # one row
    (13, 29, 0.2, (0, 5, 12), (0, 3, 28)),
    (37, 1000, 0.003, (1, 2), ()),        # some rows with no stored value at all
    (50, 61, 0.0, (), ()),                # no stored values
    (33, 5, 1.0, (), ()),                 # every entry stored
]


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_products_match_numpy(dtype, shape):
    n, k, density, er, ec = shape
    rng = np.random.default_rng(n * 1000 + k)
    A = _random_csr(rng, n, k, density, er, ec)
    X = as_sparse_rows(A, "X", np.dtype(dtype))
    dense = A.toarray()                       # float64 reference
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for width, code in [(19, IDENTITY), (64, RELU), (3, TANH)]:
        W = rng.normal(size=(k, width)).astype(dtype)
        b = rng.normal(size=width).astype(dtype)
        Z = np.full((n, width), np.nan, dtype=dtype)
        K.product_sparse_forward(X.bundle(), W, b, np.int64(code), Z)
        ref = dense @ W.astype(np.float64) + b
        ref = {IDENTITY: ref, RELU: np.maximum(ref, 0), TANH: np.tanh(ref)}[code]
        np.testing.assert_allclose(Z, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()))
        delta = rng.normal(size=(n, width)).astype(dtype)
        sw = make_sparse_work(k, X.nnz, X.dtype)
        dW = np.full((k, width), np.nan, dtype=dtype)
        K.product_sparse_weight_grad(X.bundle(), delta, sw, dW)
        ref = dense.T @ delta.astype(np.float64)
        np.testing.assert_allclose(dW, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()))
        if ec:
            assert not dW[list(ec)].any()     # an empty column: a zero gradient row


def test_batch_transpose_groups_by_column_in_batch_order():
    rng = np.random.default_rng(3)
    A = _random_csr(rng, 40, 23, 0.2, (7,), (4,))
    X = as_sparse_rows(A, "X", np.dtype(np.float64))
    order = rng.permutation(40)[:17].astype(np.int64)
    sw = make_sparse_work(23, X.nnz, X.dtype)
    K.batch_transpose(X.bundle(), order, sw)
    sub = A[order].tocsc()
    sub.sort_indices()
    np.testing.assert_array_equal(sw.col_ptr, sub.indptr)
    np.testing.assert_array_equal(sw.t_rows[:sub.nnz], sub.indices)
    np.testing.assert_array_equal(sw.t_vals[:sub.nnz], sub.data)


# ------------------------------------------------------- the training step
def _problem(rng, n=120, k=300, density=0.03):
    A = _random_csr(rng, n, k, density, (0, 9), (1, 2))
    y = rng.integers(0, 3, n)
    return A, y


@pytest.mark.parametrize("hidden", [[17], [], [9, 6]])
def test_loss_and_gradient_equal_dense(hidden):
    rng = np.random.default_rng(5)
    A, y = _problem(rng)
    net = Network([A.shape[1], *hidden, 3], activation="tanh", dtype="float64", seed=1)
    trainer = Trainer(net, l2=1e-3)
    w = rng.random(A.shape[0]) + 0.5
    loss_s, grad_s = trainer.loss_and_gradient(A, y, sample_weight=w)
    loss_d, grad_d = trainer.loss_and_gradient(A.toarray(), y, sample_weight=w)
    assert loss_s == pytest.approx(loss_d, rel=1e-13)
    np.testing.assert_allclose(grad_s, grad_d, rtol=1e-12, atol=1e-14 * np.abs(grad_d).max())


def test_sparse_gradient_finite_differences():
    rng = np.random.default_rng(6)
    A, y = _problem(rng, n=40, k=50, density=0.1)
    net = Network([50, 8, 3], activation="tanh", dtype="float64", seed=2)
    trainer = Trainer(net, l2=1e-2)
    _, grad = trainer.loss_and_gradient(A, y)
    W0, _ = net._view(0)
    cols = np.unique(A.indices)[:4]
    idx = [net._offs[0] + j * 8 + c for j in cols for c in (0, 5)]
    idx += [net._offs[0] + 1 * 8 + 3]                 # a weight of the empty column 1
    idx += [net._offs[0] + 50 * 8 + 2, net._offs[1] + 4]   # a first-layer bias, a layer-2 weight
    h = 1e-6
    for i in idx:
        numeric = central_difference(net.params, i, lambda: trainer.loss_and_gradient(A, y)[0],
                                     h)
        assert grad[i] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trainer_sparse_equals_dense(dtype):
    rng = np.random.default_rng(7)
    A, y = _problem(rng)
    results = []
    for X in (A, A.toarray()):
        net = Network([A.shape[1], 16, 3], dtype=dtype, seed=3)
        from fastnn import Adam
        hist = Trainer(net, optimizer=Adam(lr=0.01), batch_size=32, l2=1e-4, seed=0).fit(
            X, y, epochs=4)
        results.append((net.params.copy(), hist.loss, net.predict_proba(X)))
    (ps, ls, qs), (pd, ld, qd) = results
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(ps, pd, rtol=tol, atol=tol * np.abs(pd).max())
    np.testing.assert_allclose(ls, ld, rtol=tol)
    np.testing.assert_allclose(qs, qd, rtol=tol, atol=tol)


def _coefs(est):
    return np.concatenate([a.ravel() for a in est.coefs_ + est.intercepts_])


ESTIMATOR_CASES = [
    (MLPClassifier, dict(solver="adam")),
    (MLPClassifier, dict(solver="sgd", momentum=0.9, nesterovs_momentum=True,
                         hidden_layer_sizes=(12, 7), activation="logistic", batch_size=23)),
    (MLPClassifier, dict(early_stopping=True, validation_fraction=0.2)),
    (MLPClassifier, dict(solver="lbfgs", max_iter=15)),
    (MLPRegressor, dict(solver="adam", activation="relu")),
    (MLPRegressor, dict(solver="lbfgs", max_iter=15)),
]


@pytest.mark.parametrize("cls,kw", ESTIMATOR_CASES)
def test_estimator_sparse_equals_dense_float64(cls, kw):
    rng = np.random.default_rng(8)
    A, y = _problem(rng)
    if cls is MLPRegressor:
        y = rng.normal(size=A.shape[0])
    kw = {"hidden_layer_sizes": (10,), "max_iter": 6, "random_state": 0, "dtype": "float64",
          **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = cls(**kw).fit(A, y)
        d = cls(**kw).fit(A.toarray(), y)
    np.testing.assert_allclose(_coefs(s), _coefs(d), rtol=1e-12,
                               atol=1e-12 * np.abs(_coefs(d)).max())
    assert s.loss_ == pytest.approx(d.loss_, rel=1e-12)
    assert s.n_iter_ == d.n_iter_
    Xt = _random_csr(rng, 45, A.shape[1], 0.05)
    out_s = s.predict_proba(Xt) if cls is MLPClassifier else s.predict(Xt)
    out_d = d.predict_proba(Xt.toarray()) if cls is MLPClassifier else d.predict(Xt.toarray())
    np.testing.assert_allclose(out_s, out_d, rtol=1e-12, atol=1e-13)
    assert s.score(Xt, d.predict(Xt.toarray())) == 1.0 if cls is MLPClassifier else True


def test_partial_fit_sparse_equals_dense_float32():
    rng = np.random.default_rng(9)
    A, y = _problem(rng)
    s = MLPClassifier(hidden_layer_sizes=(10,), random_state=0)
    d = MLPClassifier(hidden_layer_sizes=(10,), random_state=0)
    for part in (slice(0, 60), slice(60, 120), slice(0, 120)):
        s.partial_fit(A[part], y[part], classes=[0, 1, 2])
        d.partial_fit(A[part].toarray(), y[part], classes=[0, 1, 2])
    np.testing.assert_allclose(_coefs(s), _coefs(d), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.predict_proba(A), d.predict_proba(A.toarray()), atol=1e-6)


@pytest.mark.parametrize("make", [
    sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array, sp.coo_matrix, sp.lil_matrix,
    lambda A: sp.csr_matrix((A.data, A.indices.astype(np.int64), A.indptr.astype(np.int64)),
                            shape=A.shape)])
def test_formats_give_the_same_model(make):
    rng = np.random.default_rng(10)
    A, y = _problem(rng, n=60, k=40, density=0.1)
    ref = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(A, y)
        est = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0).fit(make(A), y)
    np.testing.assert_array_equal(_coefs(est), _coefs(ref))
    np.testing.assert_array_equal(est.predict_proba(make(A)), ref.predict_proba(A))


def test_unsorted_and_duplicate_indices_and_the_caller_matrix_untouched():
    # (0,2) stored twice (summed, as scipy does), row 1 in descending column order
    A = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2, 2, 4, 3, 0]),
                       np.array([0, 2, 5])), shape=(2, 5))
    before = (A.data.copy(), A.indices.copy())
    X = as_sparse_rows(A, "X", np.dtype(np.float64))
    np.testing.assert_array_equal(X.toarray(), A.toarray())
    np.testing.assert_array_equal(X.indices, [2, 0, 3, 4])
    np.testing.assert_array_equal(A.data, before[0])
    np.testing.assert_array_equal(A.indices, before[1])
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int64


def test_row_selection():
    rng = np.random.default_rng(11)
    A = _random_csr(rng, 30, 12, 0.3, (4,), ())
    X = as_sparse_rows(A, "X", np.dtype(np.float64))
    rows = np.array([4, 0, 29, 4, 7])
    np.testing.assert_array_equal(X[rows].toarray(), A.toarray()[rows])
    assert isinstance(X[rows], SparseRows)


# --------------------------------------------------------- determinism
def test_same_bits_on_1_and_2_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    rng = np.random.default_rng(12)
    # large enough that a step runs on both threads (trainer.SERIAL_STEP_FLOPS)
    A = _random_csr(rng, 600, 3000, 0.01)
    y = rng.integers(0, 4, 600)
    runs = []
    for threads in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = MLPClassifier(hidden_layer_sizes=(48,), max_iter=2, random_state=0,
                                n_threads=threads).fit(A, y)
        runs.append((_coefs(est), est.loss_curve_, est.predict_proba(A)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


# ----------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_stored_values_names_X(bad):
    rng = np.random.default_rng(13)
    A, y = _problem(rng, n=30, k=20, density=0.2)
    A = A.copy()
    A.data[3] = bad
    with pytest.raises(ValueError, match=r"X \(sparse\) contains NaN or infinity"):
        MLPClassifier(max_iter=2).fit(A, y)
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(np.ones(A.shape), y)
    with pytest.raises(ValueError, match="X .sparse. contains NaN"):
        est.predict(sp.csr_matrix(A))


def test_bad_sparse_input():
    rng = np.random.default_rng(14)
    A, y = _problem(rng, n=30, k=20, density=0.2)
    with pytest.raises(TypeError, match="must hold numbers"):
        MLPClassifier(max_iter=2).fit(A.astype(np.complex128), y)
    with pytest.raises(ValueError, match="0 sample|empty"):
        MLPClassifier(max_iter=2).fit(sp.csr_matrix((0, 20)), [])
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(A, y)
    with pytest.raises(ValueError, match="21 features"):
        est.predict(sp.csr_matrix((3, 21)))
    lb = MLPClassifier(solver="lbfgs", max_iter=2)
    assert not hasattr(lb, "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit") as info:
        lb.partial_fit(A, y, classes=[0, 1, 2])
    assert "lbfgs is not stochastic" in str(info.value.__cause__)


# --------------------------------------------------------------- memory
def test_large_sparse_fit_allocates_nothing_of_dense_size():
    n = k = 20000
    rng = np.random.default_rng(15)
    nnz = n * k // 1000                                  # 0.1 % density
    rows = rng.integers(0, n, nnz)
    cols = rng.integers(0, k, nnz)
    A = sp.csr_matrix((rng.random(nnz), (rows, cols)), shape=(n, k))
    y = rng.integers(0, 2, n)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, batch_size=1000, random_state=0)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(A, y)
            est.predict_proba(A[:2000])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = n * k * 4                              # float32: 1.6 GB
    # measured ~27 MB: the converted copies of X, the parameters, optimizer
    # state and snapshots, the batch transpose buffers.  A dense buffer of one
    # batch (1000 x 20000 float32 = 80 MB) would already fail this.
    assert peak < dense_bytes / 32, peak
    assert np.isfinite(est.loss_)


def test_network_prediction_in_chunks_and_serial_equals_dense():
    rng = np.random.default_rng(16)
    A = _random_csr(rng, 2500, 90, 0.05, (3, 2400), (7,))   # 3 prediction chunks
    net = Network([90, 13, 4], activation="relu", dtype="float64", seed=4)
    dense = A.toarray()
    np.testing.assert_allclose(net.predict_proba(A), net.predict_proba(dense),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(net.predict_proba(A[:5]), net.predict_proba(dense[:5]),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(net.predict(A), net.predict(dense))


def test_checkpointed_sparse_fit_runs_and_cleans_up(tmp_path):
    rng = np.random.default_rng(17)
    A, y = _problem(rng, n=60, k=40, density=0.1)
    path = tmp_path / "ck.npz"
    kw = dict(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(checkpoint=str(path), checkpoint_every=1, **kw).fit(A, y)
        b = MLPClassifier(**kw).fit(A, y)
    assert not path.exists()
    np.testing.assert_array_equal(_coefs(a), _coefs(b))
