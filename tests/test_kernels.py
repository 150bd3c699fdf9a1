"""Each compiled kernel against a plain NumPy float64 reference."""
import re

import numpy as np
import pytest

from fastnn.kernels import activations as A
from fastnn.kernels import activations as act  # 'A' is also a matrix name below
from fastnn.kernels import losses as L
from fastnn.kernels import optim as O
from fastnn.kernels.gemm import (column_sums_acc, product_backward, product_backward_kept,
                                 product_forward, product_weight_grad)

from .conftest import ODD_SIZES

DTYPES = (np.float32, np.float64)
# Relative tolerance on a product whose terms are O(1): K terms of rounding.
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(actual, expected, dtype, scale=1.0):
    err = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)
    bound = TOL[dtype] * scale * max(1.0, np.max(np.abs(expected), initial=0.0))
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


GEMM_SHAPES = [(m, k, n) for m in ODD_SIZES for k in (1, 33, 129) for n in (1, 7, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_gemm_products(rng, dtype, m, k, n):
    a = rand(rng, (m, k), dtype)          # activations a_{l-1}
    W = rand(rng, (k, n), dtype)          # weights
    d = rand(rng, (m, n), dtype)          # delta_l
    a64, W64, d64 = (x.astype(np.float64) for x in (a, W, d))
    z = np.full((m, n), np.nan, dtype)
    product_forward(a, W, np.full((n, k), np.nan, dtype), z)
    assert_close(z, a64 @ W64, dtype, scale=np.sqrt(k))
    G0 = rand(rng, (k, n), dtype)
    G = G0.copy()
    product_weight_grad(a, d, np.full((k, m), np.nan, dtype), np.full((n, m), np.nan, dtype), G)
    assert_close(G, G0.astype(np.float64) + a64.T @ d64, dtype, scale=np.sqrt(m))
    b0 = rand(rng, n, dtype)
    b = b0.copy()
    column_sums_acc(d, b)
    assert_close(b, b0.astype(np.float64) + d64.sum(axis=0), dtype, scale=np.sqrt(m))
    back = np.full((m, k), np.nan, dtype)
    product_backward(d, W, back)
    assert_close(back, d64 @ W64.T, dtype, scale=np.sqrt(n))
    kept = np.full((m, k), np.nan, dtype)     # from W^T as the step keeps it
    product_backward_kept(d, np.ascontiguousarray(W.T), kept)
    np.testing.assert_array_equal(kept, back)   # the same product, the same bits


def reference_activation(name, z):
    return {"identity": z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)),
            "tanh": np.tanh(z)}[name]


def reference_derivative(name, z):
    return {"identity": np.ones_like(z), "relu": (z > 0).astype(float),
            "sigmoid": np.exp(-z) / (1 + np.exp(-z)) ** 2, "tanh": 1 / np.cosh(z) ** 2}[name]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["identity", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("m,n", [(1, 1), (7, 33), (129, 7)])
def test_activation_and_derivative(rng, dtype, name, m, n):
    code = A.CODES[name]
    Z = rand(rng, (m, n), dtype) * 3
    b = rand(rng, n, dtype)
    z64 = Z.astype(np.float64) + b.astype(np.float64)
    out = Z.copy()
    A.add_bias_activate(out, b, code)
    assert_close(out, reference_activation(name, z64), dtype)
    # the derivative is computed from the output a = h(z), as in the notes
    delta = rand(rng, (m, n), dtype)
    scaled = delta.copy()
    A.scale_by_derivative(scaled, out, code)
    expected = delta.astype(np.float64) * reference_derivative(name, z64)
    assert_close(scaled, expected, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_finite_for_extreme_inputs(dtype):
    Z = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype=dtype)
    with np.errstate(over="raise"):
        A.add_bias_activate(Z, np.zeros(5, dtype), A.SIGMOID)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(Z[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


def reference_softmax_xent(Z, T, w):
    Z = Z.astype(np.float64)
    shifted = Z - Z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(w * (T * logp).sum(axis=1)).sum()
    delta = w[:, None] * (np.exp(logp) - T) / w.sum()
    return loss, delta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", [(1, 2), (7, 3), (33, 10), (129, 7)])
def test_softmax_cross_entropy(rng, dtype, m, c):
    Z = rand(rng, (m, c), dtype) * 4
    y = rng.integers(0, c, m)
    T = np.eye(c, dtype=dtype)[y]
    w = rng.uniform(0.5, 2.0, m).astype(dtype)
    scale = dtype(1.0 / w.astype(np.float64).sum())
    D = Z.copy()
    loss, correct = L.softmax_xent_grad(D, T, w, scale)
    ref_loss, ref_delta = reference_softmax_xent(Z, T.astype(np.float64), w.astype(np.float64))
    # -log p_y = logsumexp(z) - z_y carries an absolute rounding error of a few
    # eps x max|z| per row, whatever the loss: near-certain rows (a loss of
    # ~1e-4) need that absolute term (a 1-row float32 draw failed rtol alone)
    loss_atol = 8 * np.finfo(dtype).eps * (float(np.abs(Z).max()) + 1.0) * float(w.sum())
    np.testing.assert_allclose(loss, ref_loss, rtol=TOL[dtype] * 10, atol=loss_atol)
    assert_close(D, ref_delta, dtype)
    assert correct == int(np.sum(Z.argmax(1) == y))
    P = Z.copy()
    L.softmax_rows(P)
    logits = Z.astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert_close(P, expected / expected.sum(1, keepdims=True), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype):
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    T = np.eye(3, dtype=dtype)[[1, 0, 2]]
    w = np.ones(3, dtype)
    D = Z.copy()
    loss, _ = L.softmax_xent_grad(D, T, w, dtype(1 / 3))
    # rows: wrong by 2e4; uniform (log 3); wrong by 2e4 with two tied maxima (+log 2)
    np.testing.assert_allclose(loss, 2e4 + np.log(3) + 2e4 + np.log(2), rtol=1e-6)
    assert np.all(np.isfinite(D))
    np.testing.assert_allclose(D[0], [1 / 3, -1 / 3, 0], atol=1e-7)
    P = Z.copy()
    L.softmax_rows(P)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", [(1, 1), (7, 3), (129, 33)])
def test_squared_error(rng, dtype, m, c):
    Z = rand(rng, (m, c), dtype)
    T = rand(rng, (m, c), dtype)
    w = rng.uniform(0.5, 2.0, m).astype(dtype)
    w64 = w.astype(np.float64)
    D = Z.copy()
    loss, _ = L.squared_error_grad(D, T, w, dtype(1 / w64.sum()))
    r = Z.astype(np.float64) - T
    np.testing.assert_allclose(loss, 0.5 * (w64 * (r**2).sum(1)).sum(), rtol=TOL[dtype] * 10)
    assert_close(D, w64[:, None] * r / w64.sum(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", [(1, 1), (7, 3), (129, 33)])
def test_sigmoid_cross_entropy(rng, dtype, m, c):
    Z = rand(rng, (m, c), dtype) * 5
    Z[0, 0] = 1e4 if dtype is np.float64 else dtype(1e4)   # extreme logit stays finite
    T = (rng.random((m, c)) < 0.5).astype(dtype)
    w = np.ones(m, dtype)
    D = Z.copy()
    loss, correct = L.sigmoid_xent_grad(D, T, w, dtype(1 / m))
    z = Z.astype(np.float64)
    ref = (np.logaddexp(0, z) - T * z).sum()
    np.testing.assert_allclose(loss, ref, rtol=TOL[dtype] * 10)
    assert_close(D, (1 / (1 + np.exp(-z)) - T) / m, dtype)
    assert correct == int(np.all((z > 0) == (T > 0.5), axis=1).sum())


def reference_update(kind, p, g, s1, s2, lr, mu, b1, b2, eps, t):
    p, g, s1, s2 = (x.astype(np.float64) for x in (p, g, s1, s2))
    if kind == O.SGD:
        return p - lr * g, s1, s2
    if kind in (O.MOMENTUM, O.NESTEROV):
        v = mu * s1 - lr * g
        step = mu * v - lr * g if kind == O.NESTEROV else v
        return p + step, v, s2
    m = b1 * s1 + (1 - b1) * g
    v = b2 * s2 + (1 - b2) * g * g
    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    return p - lr_t * m / (np.sqrt(v) + eps), m, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [O.SGD, O.MOMENTUM, O.NESTEROV, O.ADAM])
@pytest.mark.parametrize("size", [1, 33, 1000])
@pytest.mark.parametrize("decay", [0.0, 0.3])
def test_optimizer_updates(rng, dtype, kind, size, decay):
    p, g, s1 = (rand(rng, size, dtype) for _ in range(3))
    s2 = np.abs(rand(rng, size, dtype))
    lr, mu, b1, b2, eps, t = 0.05, 0.9, 0.9, 0.999, 1e-8, 3
    # the L2 term enters the gradient: g + decay * p
    g_total = (g.astype(np.float64) + decay * p.astype(np.float64))
    ref = reference_update(kind, p, g_total, s1, s2, lr, mu, b1, b2, eps, t)
    step_lr = O.adam_step_size(lr, b1, b2, t) if kind == O.ADAM else lr
    lo = size // 3
    before = p.copy()
    probe = O.update_range(p, g, s1, s2, lo, size, kind, dtype(step_lr), dtype(mu), dtype(b1),
                           dtype(b2), dtype(eps), dtype(decay))
    assert probe == 0.0 and not np.signbit(probe)         # every new value finite
    np.testing.assert_array_equal(p[:lo], before[:lo])    # outside the range: untouched
    for got, want in zip((p, s1, s2), ref):
        assert_close(got[lo:], want[lo:], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [O.SGD, O.MOMENTUM, O.NESTEROV, O.ADAM])
@pytest.mark.parametrize("bad", ["inf", "nan", "overflow"])
@pytest.mark.parametrize("where", [0, 16, 32])
def test_optimizer_update_probe_flags_a_non_finite_value(rng, dtype, kind, bad, where):
    """update_range returns NaN when any new value is inf or NaN, wherever it
    sits (vector body or remainder of the vectorised loop)."""
    size = 33
    p, g, s1 = (rand(rng, size, dtype) for _ in range(3))
    s2 = np.abs(rand(rng, size, dtype))
    lr = 0.05
    if bad == "overflow":   # finite inputs whose update overflows
        p[where] = np.finfo(dtype).max
        g[where] = -np.finfo(dtype).max
        lr = 4.0
    else:
        g[where] = float(bad)
    probe = O.update_range(p, g, s1, s2, 0, size, kind, dtype(lr), dtype(0.9), dtype(0.9),
                           dtype(0.999), dtype(1e-8), dtype(0))
    if kind == O.ADAM and bad == "overflow":   # Adam's step is bounded by lr
        assert probe == 0.0
    else:
        assert np.isnan(probe)


# --- the GEMM core (fastnn.kernels.gemm.gemm, micro-kernel in microkernel.py) -----
from fastnn.kernels import gemm as G  # noqa: E402
from fastnn.kernels import microkernel as UK  # noqa: E402


def lanes(dtype):
    return UK.VECTOR_BITS // (8 * np.dtype(dtype).itemsize)


def tile_edges(dtype):
    """Column counts at every edge of the register tile for this dtype: one
    vector (VL), the tile (NR = NV * VL), each side of both, and several panels."""
    vl = lanes(dtype)
    nr = UK.NV * vl
    return sorted({1, vl - 1, vl, vl + 1, nr - 1, nr, nr + 1, 2 * nr + vl + 3})


# (PACK_MIN_ROWS + 1 and + 2: B packed, so a last tile of 1 or 2 valid rows;
# below PACK_MIN_ROWS such rows go through the one-row kernels)
ROW_EDGES = sorted({1, 2, G.ROW_KERNEL_BELOW - 1, G.ROW_KERNEL_BELOW, G.MR - 1, G.MR, G.MR + 1,
                    G.PACK_MIN_ROWS - 1, G.PACK_MIN_ROWS, G.PACK_MIN_ROWS + 1,
                    G.PACK_MIN_ROWS + 2, G.MC - 1, G.MC + 1, 2 * G.MC + G.MR + 2})
K_EDGES = (1, 7, G.KC - 1, G.KC, G.KC + 1, 2 * G.KC + 7)


def gemm_ref(A, B):
    return A.astype(np.float64) @ B.astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", ROW_EDGES)
@pytest.mark.parametrize("k", K_EDGES)
def test_gemm_tile_edges(rng, dtype, m, k):
    """C = A B and C += A B against float64 NumPy at every edge of the tile, of
    the row block MC and of the K block KC, with A read in place and transposed."""
    for n in tile_edges(dtype):
        A = rand(rng, (m, k), dtype)
        B = rand(rng, (k, n), dtype)
        ref = gemm_ref(A, B)
        C = np.full((m, n), np.nan, dtype)
        G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C)
        assert_close(C, ref, dtype, scale=np.sqrt(k))
        # A as a transposed view (the weight-gradient product reads a^T in place)
        At = np.ascontiguousarray(A.T)
        C0 = rand(rng, (m, n), dtype)
        C = C0.copy()
        G.gemm(At.T, B, C, 1, G.EPI_STORE, act.IDENTITY, C[0], C)
        assert_close(C, C0.astype(np.float64) + ref, dtype, scale=np.sqrt(k))


def dot_columns(dtype):
    """The widest C that gemm computes as dot products along K (_dot_product)."""
    return min(lanes(dtype) // G.DOT_LANES, UK.DOT_COLUMNS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", (1, 2, G.MR + 1, 33))
def test_gemm_few_columns_as_dot_products(rng, dtype, m):
    """A C of at most VL / DOT_LANES columns with K >= VL is computed as dot
    products along K (microkernel.dot_rows): against float64 NumPy at every
    K edge of its vectors (the masked last piece) and for every number of
    columns up to one past the widest, C = A B and C += A B, with A a block
    of rows of a wider matrix; every row has the bits it has alone."""
    vl = lanes(dtype)
    for k in sorted({vl - 1, vl, vl + 1, 2 * vl - 1, 2 * vl + 1, 33, 129, G.KC + 9}):
        for n in range(1, dot_columns(dtype) + 2):
            wide = rand(rng, (m, k + 5), dtype)
            A = wide[:, 2:2 + k]               # rows k + 5 apart
            B = rand(rng, (k, n), dtype)
            ref = gemm_ref(A, B)
            C = np.full((m, n), np.nan, dtype)
            G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C)
            assert_close(C, ref, dtype, scale=np.sqrt(k))
            C0 = rand(rng, (m, n), dtype)
            Cacc = C0.copy()
            G.gemm(A, B, Cacc, 1, G.EPI_STORE, act.IDENTITY, Cacc[0], Cacc)
            assert_close(Cacc, C0.astype(np.float64) + ref, dtype, scale=np.sqrt(k))
            if n <= dot_columns(dtype) and k >= vl:
                # the dot products add the old C to the rounded sum (K in one block)
                np.testing.assert_array_equal(Cacc, C0 + C)
            for i in {0, m - 1}:
                row = np.empty((1, n), dtype)
                G.gemm(np.ascontiguousarray(A[i:i + 1]), B, row, 0, G.EPI_STORE, act.IDENTITY,
                       row[0], row)
                np.testing.assert_array_equal(row[0], C[i])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["identity", "relu", "sigmoid", "tanh"])
def test_gemm_dot_products_epilogues_and_nan(rng, dtype, name):
    """The forward epilogue after the dot products (a classifier's last layer:
    bias, activation) has the bits of the plain product and the row loops;
    the backward one (times h'(H)) too; a NaN in a row stays in that row."""
    code = act.CODES[name]
    m, k = 37, 3 * lanes(dtype) + 5
    for n in range(1, dot_columns(dtype) + 1):
        a = rand(rng, (m, k), dtype)
        a[5, k - 1] = np.nan                 # in the masked last piece
        W = rand(rng, (k, n), dtype)
        b = rand(rng, n, dtype)
        fused = np.full((m, n), np.nan, dtype)
        G.gemm(a, W, fused, 0, G.EPI_BIAS_ACT, code, b, fused)
        plain = np.full((m, n), np.nan, dtype)
        G.gemm(a, W, plain, 0, G.EPI_STORE, act.IDENTITY, plain[0], plain)
        act.add_bias_activate(plain, b, code)
        np.testing.assert_array_equal(fused.view(np.uint8), plain.view(np.uint8))
        assert np.isnan(fused[5]).all() and not np.isnan(np.delete(fused, 5, 0)).any()
        ok = np.arange(m) != 5
        assert_close(fused[ok], reference_activation(
            name, a[ok].astype(np.float64) @ W.astype(np.float64) + b), dtype, scale=np.sqrt(k))
        # backward through a layer of n units: delta (m x k) W^T (k x n) * h'(H)
        d = rand(rng, (m, k), dtype)
        H = reference_activation(name, rand(rng, (m, n), np.float64)).astype(dtype)
        dA = np.empty((m, n), dtype)
        G.gemm(d, W, dA, 0, G.EPI_DERIV, code, b, H)
        plain = np.empty((m, n), dtype)
        G.gemm(d, W, plain, 0, G.EPI_STORE, act.IDENTITY, plain[0], plain)
        act.scale_by_derivative(plain, H, code)
        np.testing.assert_array_equal(dA.view(np.uint8), plain.view(np.uint8))


# a vector multiply or multiply-add in x86 machine code (FMA or not)
_MULTIPLY = re.compile(r"\bv?(fmadd|fnmadd|mul)[0-9]*p[sd]\b")


def _compiled_fresh(dispatcher, *args):
    """``dispatcher``'s Python function compiled anew (no cache, so its IR and
    machine code can be read) and run on ``args``; returns (llvm IR, asm)."""
    import numba
    from fastnn._jit import JIT_OPTIONS
    fresh = numba.njit(**{**JIT_OPTIONS, "cache": False})(dispatcher.py_func)
    fresh(*args)
    sig = fresh.signatures[0]
    return fresh.inspect_llvm(sig), fresh.inspect_asm(sig)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_epoch_calls_the_one_compiled_training_step_by_its_symbol(rng, dtype):
    """train_epoch, compiled for the bundles a Trainer really passes, calls
    the step's passes (kernels.step.parallel_step_pass, a parfor) by their
    shared symbol and links none of their code: no parfor in its module;
    the parfor calls its bodies by their symbols."""
    import numba
    from fastnn import Network, Trainer
    from fastnn._jit import JIT_OPTIONS
    from fastnn.kernels import step
    X = rand(rng, (33, 5), dtype)
    y = rng.integers(0, 3, 33)
    Trainer(Network([5, 7, 3], dtype=dtype, seed=0), batch_size=16).fit(X, y, epochs=1)
    sig = next(s for s in step.train_epoch.signatures if s[1].dtype == numba.from_dtype(dtype))
    fresh = numba.njit(**{**JIT_OPTIONS, "cache": False})(step.train_epoch.py_func)
    fresh.compile(sig)
    ir = fresh.inspect_llvm(sig)
    symbol = step.STEP_PASS.symbols[step._step_pass_signature(dtype)]
    assert re.search(rf'call .*@"?{re.escape(symbol)}"?\(', ir)
    assert "parfor" not in ir
    # ... and the parfor calls its two bodies, a shard of rows and a block of
    # the weights pass, by their symbols too
    pass_sig = step._step_pass_signature(dtype)
    fresh_pass = numba.njit(**{**JIT_OPTIONS, "cache": False, "parallel": True})(
        step.parallel_step_pass.py_func)
    fresh_pass.compile(pass_sig)
    ir = fresh_pass.inspect_llvm(pass_sig)
    for shared, body_sig in ((step.SHARD_ROWS, step._shard_rows_signature(dtype)),
                             (step.WEIGHTS_BLOCK, step._weights_block_signature(dtype))):
        assert re.search(rf'call .*@"?{re.escape(shared.symbols[body_sig])}"?\(', ir)
    # a block of the weights pass calls the optimizer update by symbol, and a
    # shard of rows packs its deltas for the weights pass by symbol
    from fastnn.kernels import gemm as gemm_module
    from fastnn.kernels import optim
    for caller, caller_sig, shared, shared_sig in (
            (step.weights_block_kernel, step._weights_block_signature(dtype),
             optim.UPDATE_RANGE, optim._update_range_signature(dtype)),
            (step.shard_rows_kernel, step._shard_rows_signature(dtype),
             gemm_module.PACK_B_ROWS, gemm_module._pack_b_rows_signature(dtype))):
        fresh_caller = numba.njit(**{**JIT_OPTIONS, "cache": False})(caller.py_func)
        fresh_caller.compile(caller_sig)
        assert re.search(rf'call .*@"?{re.escape(shared.symbols[shared_sig])}"?\(',
                         fresh_caller.inspect_llvm(caller_sig))
    # the parallel prediction likewise calls its block by symbol (rows past
    # the limits of the one-thread path)
    from fastnn.kernels.step import predict_rows
    net = Network([5, 7, 3], dtype=dtype, seed=0)
    net.predict_proba(rand(rng, (net._parallel_prediction_rows(), 5), dtype))
    rows_sig = next(s for s in predict_rows.signatures if s[1].dtype == numba.from_dtype(dtype))
    fresh_rows = numba.njit(**{**JIT_OPTIONS, "cache": False, "parallel": True})(
        predict_rows.py_func)
    fresh_rows.compile(rows_sig)
    block_symbol = step.PREDICT_BLOCK.symbols[step._predict_block_signature(dtype)]
    assert re.search(rf'call .*@"?{re.escape(block_symbol)}"?\(', fresh_rows.inspect_llvm(rows_sig))


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_call_the_one_compiled_gemm_core_by_its_symbol(rng, dtype):
    """A product with the operand types of training and prediction (C
    C-contiguous) calls the GEMM core compiled once, through its shared
    symbol (kernels/shared.py), and holds none of its code: no multiply-add
    in its machine code.  A product with a strided C (a view of wider rows)
    links the core in as numba does by default, and gets the same bits."""
    m, k, n = 37, 19, 2 * UK.NV * lanes(dtype) + 5
    A = rand(rng, (m, k), dtype)
    B = rand(rng, (k, n), dtype)
    shared = np.empty((m, n), dtype)
    ir, asm = _compiled_fresh(product_forward, A, B, B, shared)
    symbol = G.GEMM_CORE.symbols[G._core_signature(dtype)]
    assert re.search(rf'call i32 @"?{re.escape(symbol)}"?\(', ir)
    assert not _MULTIPLY.search(asm)
    assert_close(shared, gemm_ref(A, B), dtype, scale=np.sqrt(k))

    wide = np.full((m, n + 9), np.nan, dtype)
    linked = wide[:, 3:3 + n]
    ir, asm = _compiled_fresh(G.gemm, A, B, linked, 0, G.EPI_STORE, act.IDENTITY, linked[0],
                              linked)
    assert symbol not in ir
    assert _MULTIPLY.search(asm)
    np.testing.assert_array_equal(linked, shared)
    assert np.isnan(wide[:, :3]).all() and np.isnan(wide[:, 3 + n:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", (1, 7, G.KC + 1, 2 * G.KC + 7))
def test_weight_gradient_of_few_outputs_computed_transposed_has_the_same_bits(rng, dtype, m):
    """The identity the step relies on when it computes the weight gradient of
    a layer with fewer outputs than a vector's lanes as (delta^T a)^T
    (kernels.step.weight_gradient_rows; the step itself is checked by the
    finite-difference tests of test_training.py, whose layers are that
    narrow): for a block of W's rows, the same bits as a^T delta, at every K
    edge, for row blocks of every size, with B a block of a's columns."""
    k = G.MC + 5
    for n in sorted({1, 3, lanes(dtype) - 1}):
        a = rand(rng, (m, k), dtype)
        delta = rand(rng, (m, n), dtype)
        for i0, i1 in ((0, k), (0, 1), (3, 3 + G.MR + 1), (k - 5, k)):
            direct = np.empty((i1 - i0, n), dtype)
            G.gemm(a.T[i0:i1], delta, direct, 0, G.EPI_STORE, act.IDENTITY, direct[0], direct)
            dWT = np.empty((n, i1 - i0), dtype)
            G.gemm(delta.T, a[:, i0:i1], dWT, 0, G.EPI_STORE, act.IDENTITY, dWT[0], dWT)
            np.testing.assert_array_equal(dWT.T, direct)
            assert_close(direct, gemm_ref(a.T[i0:i1], delta), dtype, scale=np.sqrt(m))


def packed_a_columns(dtype):
    """Columns enough for gemm to pack A's rows (A a transposed view)."""
    return G.PACK_A_MIN_PANELS * UK.NV * lanes(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", ROW_EDGES)
@pytest.mark.parametrize("k", K_EDGES)
def test_gemm_packed_a_edges(rng, dtype, m, k):
    """C (+)= A B with A a transposed view wide enough for A's rows to be
    packed into micro-panels (the weight gradient's a^T), at every row and K
    edge, with the last panel of B full and partial."""
    for n in (packed_a_columns(dtype), packed_a_columns(dtype) + lanes(dtype) + 3):
        A = np.ascontiguousarray(rand(rng, (k, m), dtype)).T
        B = rand(rng, (k, n), dtype)
        C0 = rand(rng, (m, n), dtype)
        C = C0.copy()
        G.gemm(A, B, C, 1, G.EPI_STORE, act.IDENTITY, C[0], C)
        assert_close(C, C0.astype(np.float64) + gemm_ref(A, B), dtype, scale=np.sqrt(k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", (G.PACK_MIN_ROWS, 2 * G.MC + G.MR + 2))
@pytest.mark.parametrize("k", (7, G.KC + 1))
def test_gemm_pack_workspace_gives_the_bits_of_its_own_buffers(rng, dtype, m, k):
    """A product packing into the caller's workspace (``pack``: every offset
    of it, so the 64-byte alignment is found at each of them) gives the bits
    of one packing into buffers of its own (no workspace: gemm allocates one
    before the core); B's panels packed, A's rows too, the edge panel alone,
    and nothing packed.  A workspace too small for what is packed is refused
    (the core allocates nothing: it runs without reference counting)."""
    for n in (lanes(dtype) + 3, 2 * UK.NV * lanes(dtype) + 5,
              packed_a_columns(dtype) + lanes(dtype) + 3):
        A = np.ascontiguousarray(rand(rng, (k, m), dtype)).T
        B = rand(rng, (k, n), dtype)
        own = np.empty((m, n), dtype)
        G.gemm(A, B, own, 0, G.EPI_STORE, act.IDENTITY, own[0], own)
        size = G.pack_elements(n, np.dtype(dtype).itemsize)
        for offset in range(64 // np.dtype(dtype).itemsize):
            pack = np.full(offset + size, np.nan, dtype)[offset:]
            C = np.full((m, n), np.nan, dtype)
            G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C, pack)
            assert np.array_equal(C, own)
        assert_close(own, gemm_ref(A, B), dtype, scale=np.sqrt(k))
        assert 0 < G.product_elements(A, own, own[:0]) <= size
        with pytest.raises(ValueError, match="product_elements"):
            G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C, np.empty(3, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,wide,transposed", [
    (13, False, False),                     # B read in place
    (G.PACK_MIN_ROWS + 1, False, False),    # B's panels packed
    (G.PACK_MIN_ROWS + 1, True, True)])     # B's panels and A's rows packed
def test_gemm_writes_only_its_block(rng, dtype, m, wide, transposed):
    """Views into bigger arrays: nothing outside C's block is read into it or written."""
    k = 37
    n = packed_a_columns(dtype) + 5 if wide else 2 * lanes(dtype) * UK.NV + 5
    big_C = np.full((m + 4, n + 9), 7.0, dtype)
    big_B = np.full((k + 3, n + 9), np.nan, dtype)
    big_A = np.full((m + 2, k + 5), np.nan, dtype)
    A = big_A[1:1 + m, 2:2 + k]
    if transposed:
        big_A = np.full((k + 5, m + 2), np.nan, dtype)
        A = big_A[2:2 + k, 1:1 + m].T
    B = big_B[:k, 3:3 + n]
    C = big_C[2:2 + m, 4:4 + n]
    A[:] = rand(rng, (m, k), dtype)
    B[:] = rand(rng, (k, n), dtype)
    G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C)
    assert_close(C, gemm_ref(A, B), dtype, scale=np.sqrt(k))
    outside = big_C.copy()
    outside[2:2 + m, 4:4 + n] = 7.0
    assert (outside == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", (1, 2, G.MR + 1, G.PACK_MIN_ROWS - 1, G.MC + 1))
@pytest.mark.parametrize("k", (1, 33, G.KC + 1))
def test_gemm_with_b_packed_ahead_gives_the_same_bits(rng, dtype, m, k):
    """B's panels packed ahead by pack_b_rows (in two row ranges, as two
    shards of the rows pass pack their deltas) and passed as packed_b: the
    same bits as the GEMM packing (or reading) B itself, at every column
    edge, for A read in place and transposed, with and without accumulate."""
    for n in tile_edges(dtype) + [packed_a_columns(dtype) + 3]:
        A = rand(rng, (m, k), dtype)
        B = rand(rng, (k, n), dtype)
        P = np.full((G.packed_b_elements(k, n, np.dtype(dtype).itemsize) // G.panel_columns(B)
                     + 1, G.panel_columns(B)), np.nan, dtype)[:-1]
        cut = k // 2
        G.pack_b_rows(B, 0, cut, P)
        G.pack_b_rows(B, cut, k, P)
        for a in (A, np.ascontiguousarray(A.T).T):
            C = np.full((m, n), np.nan, dtype)
            G.gemm(a, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C)
            Cp = np.full((m, n), np.nan, dtype)
            G.gemm(a, B, Cp, 0, G.EPI_STORE, act.IDENTITY, Cp[0], Cp, None, P)
            np.testing.assert_array_equal(Cp, C)
            assert_close(Cp, gemm_ref(A, B), dtype, scale=np.sqrt(k))
            C0 = rand(rng, (m, n), dtype)
            C, Cp = C0.copy(), C0.copy()
            G.gemm(a, B, C, 1, G.EPI_STORE, act.IDENTITY, C[0], C)
            G.gemm(a, B, Cp, 1, G.EPI_STORE, act.IDENTITY, Cp[0], Cp, None, P)
            np.testing.assert_array_equal(Cp, C)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_rows_do_not_depend_on_the_other_rows(rng, dtype):
    """Every row goes through the same arithmetic wherever it sits: a full
    tile, the bottom edge, the one-row kernel, or alone (prediction's
    sample-order invariance and the thread-count invariance rest on this)."""
    k = 2 * G.KC + 3
    n = lanes(dtype) * UK.NV + 3
    m = 2 * G.MC + 5
    A = rand(rng, (m, k), dtype)
    # A read down its columns, with B wide enough that A's rows are packed:
    # the same sums as A read in place
    nw = packed_a_columns(dtype) + 3
    Bw = rand(rng, (k, nw), dtype)
    Cw = np.empty((m, nw), dtype)
    G.gemm(A, Bw, Cw, 0, G.EPI_STORE, act.IDENTITY, Cw[0], Cw)
    Cwt = np.empty((m, nw), dtype)
    G.gemm(np.ascontiguousarray(A.T).T, Bw, Cwt, 0, G.EPI_STORE, act.IDENTITY, Cwt[0], Cwt)
    np.testing.assert_array_equal(Cwt, Cw)
    B = rand(rng, (k, n), dtype)
    C = np.empty((m, n), dtype)
    G.gemm(A, B, C, 0, G.EPI_STORE, act.IDENTITY, C[0], C)
    perm = rng.permutation(m)
    Cp = np.empty((m, n), dtype)
    G.gemm(np.ascontiguousarray(A[perm]), B, Cp, 0, G.EPI_STORE, act.IDENTITY, Cp[0], Cp)
    np.testing.assert_array_equal(Cp, C[perm])
    for i in (0, 1, G.MR, m - 1):
        row = np.empty((1, n), dtype)
        G.gemm(A[i:i + 1], B, row, 0, G.EPI_STORE, act.IDENTITY, row[0], row)
        np.testing.assert_array_equal(row[0], C[i])
    # (PACK_MIN_ROWS rows: B's panels packed; one row fewer: B read in place;
    # one or two more: a last tile of 1 or 2 valid rows on packed panels)
    for r in (2, 3, G.ROW_KERNEL_BELOW, G.MR + 1, G.PACK_MIN_ROWS - 1, G.PACK_MIN_ROWS,
              G.PACK_MIN_ROWS + 1, G.PACK_MIN_ROWS + 2):
        part = np.empty((r, n), dtype)
        G.gemm(A[5:5 + r], B, part, 0, G.EPI_STORE, act.IDENTITY, part[0], part)
        np.testing.assert_array_equal(part, C[5:5 + r])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["identity", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (9, 129, 33), (33, G.KC + 1, 7),
                                   (129, 7, 129), (G.MR + 1, 2 * G.KC + 1, 70)])
def test_gemm_fused_epilogues(rng, dtype, name, m, k, n):
    code = act.CODES[name]
    a = rand(rng, (m, k), dtype)
    W = (rand(rng, (k, n), dtype) / np.sqrt(k)).astype(dtype)
    b = rand(rng, n, dtype)
    a64, W64, b64 = (x.astype(np.float64) for x in (a, W, b))
    # forward: z = h(a W + b), W read in place
    Z = np.full((m, n), np.nan, dtype)
    G.gemm(a, W, Z, 0, G.EPI_BIAS_ACT, code, b, Z)
    assert_close(Z, reference_activation(name, a64 @ W64 + b64), dtype, scale=np.sqrt(k))
    # backward: dA = (delta W^T) * h'(H), h' from the layer's outputs H, W^T packed
    WT = np.empty((n, k), dtype)
    G.pack_transpose(W, WT)
    np.testing.assert_array_equal(WT, W.T)
    H = np.empty((m, k), dtype)
    H[:] = reference_activation(name, rand(rng, (m, k), np.float64)).astype(dtype)
    d = rand(rng, (m, n), dtype)
    dA = np.full((m, k), np.nan, dtype)
    G.gemm(d, WT, dA, 0, G.EPI_DERIV, code, b, H)
    H64 = H.astype(np.float64)
    deriv = {"identity": np.ones_like(H64), "relu": (H64 > 0).astype(float),
             "sigmoid": H64 * (1 - H64), "tanh": 1 - H64**2}[name]
    assert_close(dA, (d.astype(np.float64) @ W64.T) * deriv, dtype, scale=np.sqrt(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["identity", "relu"])
@pytest.mark.parametrize("accumulate", [0, 1])
@pytest.mark.parametrize("m,k,n", [(G.MR * 3 + 5, 3, 4 * G.NV * 16 + 3), (G.MR + 1, G.KC + 9, 5),
                                   (2, 7, 129), (13, 1, 33)])
def test_in_register_epilogue_has_the_bits_of_the_row_loops(rng, dtype, name, accumulate, m, k, n):
    """Bias, relu and relu' applied by the micro-kernel to its registers give
    exactly the bits of a plain product followed by the row-by-row loops of
    activations.py, in every tile and row variant (the sizes reach the full
    and edge tiles, the wide, full and edge one-row kernels), with and without
    accumulation into C, and a NaN in the sum stays NaN."""
    code = act.CODES[name]
    a = rand(rng, (m, k), dtype)
    a[m // 2, 0] = np.nan                      # a NaN row must stay NaN through relu
    W = rand(rng, (k, n), dtype)
    b = rand(rng, n, dtype)
    C0 = rand(rng, (m, n), dtype)
    fused = C0.copy()
    G.gemm(a, W, fused, accumulate, G.EPI_BIAS_ACT, code, b, fused)
    plain = C0.copy()
    G.gemm(a, W, plain, accumulate, G.EPI_STORE, act.IDENTITY, plain[0], plain)
    act.add_bias_activate(plain, b, code)
    np.testing.assert_array_equal(fused.view(np.uint8), plain.view(np.uint8))
    assert np.isnan(fused[m // 2]).all()
    # backward: times relu'(H) (identity' is 1: the product alone)
    WT = np.ascontiguousarray(rand(rng, (n, k), dtype))
    d = rand(rng, (m, n), dtype)
    H = np.maximum(rand(rng, (m, k), dtype), 0)
    H[0, 0] = 0                                # relu'(0) is 0
    D0 = rand(rng, (m, k), dtype)
    fused = D0.copy()
    G.gemm(d, WT, fused, accumulate, G.EPI_DERIV, code, b, H)
    plain = D0.copy()
    G.gemm(d, WT, plain, accumulate, G.EPI_STORE, act.IDENTITY, plain[0], plain)
    act.scale_by_derivative(plain, H, code)
    np.testing.assert_array_equal(fused.view(np.uint8), plain.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 1), (7, 33), (17, 16), (129, 7), (300, 257)])
def test_pack_transpose(rng, dtype, m, n):
    S = rand(rng, (m, n), dtype)
    D = np.full((n, m + 5), np.nan, dtype)       # a workspace wider than needed
    G.pack_transpose(S, D[:, :m])
    np.testing.assert_array_equal(D[:, :m], S.T)
    assert np.isnan(D[:, m:]).all()              # nothing written past the packed block


def test_gemm_empty_sum_applies_epilogue():
    C = np.full((3, 2), 5.0, np.float32)
    b = np.array([1.0, -1.0], np.float32)
    A = np.zeros((3, 0), np.float32)
    G.gemm(A, np.zeros((0, 2), np.float32), C, 0, G.EPI_BIAS_ACT, act.RELU, b, C)
    np.testing.assert_array_equal(C, [[1, 0]] * 3)


def test_vector_width_follows_the_target_cpu(monkeypatch):
    """The tile is chosen from the CPU numba compiles for: AVX-512 names get
    512-bit vectors, AVX2 names 256, anything older 128."""
    from numba.core import config
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    for name, bits in [("skylake-avx512", 512), ("znver4", 512), ("haswell", 256),
                       ("znver2", 256), ("nehalem", 128), ("x86-64", 128)]:
        monkeypatch.setattr(config, "CPU_NAME", name)
        assert UK._vector_bits() == bits, name
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma")
    assert UK._vector_bits() == 256


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_add_the_rows_in_order_at_every_block_edge(rng, dtype):
    """column_sums_acc (the bias gradient) sums each column in registers, a
    block of SUM_VECTORS vectors at a time: the same bits as adding the rows
    one after another, at widths around one vector, one block and two, for
    1 to 33 rows, and it writes nothing past the last column."""
    lanes = G.vector_lanes(np.empty(0, dtype))
    block = UK.SUM_VECTORS * lanes
    widths = sorted({1, 3, lanes - 1, lanes, lanes + 1, block - 1, block, block + 1,
                     2 * block + 7, 100})
    for m in (1, 7, 33):
        for n in widths:
            S = rand(rng, (m, n), dtype)
            b0 = rand(rng, n + 1, dtype)   # one element past the columns: untouched
            expected = b0.copy()
            for i in range(m):
                expected[:n] += S[i]
            b = b0.copy()
            column_sums_acc(S, b[:n])
            assert b.tobytes() == expected.tobytes(), (m, n)


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("dims", [[784, 256, 10], [2, 100, 3], [129, 7, 3], [1, 1],
                                  [97, 300, 16, 15, 200]])
def test_weight_blocks_cover_every_row_once(dims, lanes):
    """The weights pass's blocks: every row of every W_l in exactly one
    block, in order, FEW_OUTPUTS_BLOCK_ROWS rows for a layer of fewer outputs
    than a vector has lanes (its gradient is computed transposed), else
    GRAD_BLOCK_ROWS; the last block of a layer may be shorter."""
    from fastnn.kernels import step
    d = np.array(dims, dtype=np.int64)
    count = step.weight_block_count(d, lanes)
    seen = [[] for _ in range(len(dims) - 1)]
    for t in range(count):
        l, i0, i1 = step.weight_block(d, t, lanes)
        rows = step.FEW_OUTPUTS_BLOCK_ROWS if dims[l + 1] < lanes else step.GRAD_BLOCK_ROWS
        assert 0 < i1 - i0 <= rows and (i0 % rows == 0)
        seen[l].extend(range(i0, i1))
    assert seen == [list(range(k)) for k in dims[:-1]]
