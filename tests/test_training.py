"""The whole network: gradients against finite differences, reproducibility
across thread counts, and the accuracy the derivation notes reach."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn

from .conftest import central_difference, rows_off_relu_kinks


def make_problem(rng, sizes, output, n):
    X = rng.standard_normal((n, sizes[0]))
    if output == "softmax":
        y = rng.integers(0, sizes[-1], n)
    elif output == "sigmoid":
        y = (rng.random((n, sizes[-1])) < 0.5).astype(float)
    else:
        y = rng.standard_normal((n, sizes[-1]))
    return X, y


def finite_difference_error(trainer, X, y, w=None, h=1e-6):
    """Max relative error between the analytic and central-difference gradients."""
    params = trainer.network.params
    _, grad = trainer.loss_and_gradient(X, y, w)
    numeric = np.empty_like(grad)
    for i in range(params.size):
        numeric[i] = central_difference(params, i,
                                        lambda: trainer.loss_and_gradient(X, y, w)[0], h)
    return np.max(np.abs(numeric - grad)) / np.max(np.abs(grad))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_gradient_matches_finite_differences(rng, activation, depth, l2):
    sizes = [5] + [int(s) for s in rng.choice([1, 4, 7], size=depth - 1)] + [3]
    net = fastnn.Network(sizes, activation=activation, dtype="float64",
                         seed=int(rng.integers(2**31)))
    # Biases start at zero, so a relu unit fed only by dead units sits exactly on
    # its kink (z = 0), where the derivative is undefined: move them off it.
    for b in net.biases:
        b[:] = rng.uniform(0.05, 0.5, b.shape)
    # 37 rows: several shards of unequal size, so the shard reduction is checked too
    X, y = make_problem(rng, sizes, "softmax", 37)
    keep = rows_off_relu_kinks(net, X)
    X, y = X[keep], y[keep]
    err = finite_difference_error(fastnn.Trainer(net, l2=l2), X, y)
    assert err < 1e-6, f"relative gradient error {err:.3g} for {sizes} {activation}"


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradient_of_a_large_batch(rng, activation):
    """600 rows and 129 inputs: the weight gradient's sum over rows spans several
    K blocks of the GEMM, dW_1 spans two row blocks (of either size: 7
    outputs are computed transposed where a vector has more lanes), and the
    batch is cut into several shards and loss groups."""
    from fastnn.kernels.gemm import KC
    from fastnn.kernels.step import FEW_OUTPUTS_BLOCK_ROWS, GRAD_BLOCK_ROWS, LOSS_GROUP_ROWS
    sizes = [max(GRAD_BLOCK_ROWS, FEW_OUTPUTS_BLOCK_ROWS) + 1, 7, 3]
    net = fastnn.Network(sizes, activation=activation, dtype="float64",
                         seed=int(rng.integers(2**31)))
    for b in net.biases:
        b[:] = rng.uniform(0.05, 0.5, b.shape)
    X, y = make_problem(rng, sizes, "softmax", 600)
    keep = rows_off_relu_kinks(net, X)
    X, y = X[keep], y[keep]
    assert len(X) > 2 * KC and len(X) > 4 * LOSS_GROUP_ROWS
    err = finite_difference_error(fastnn.Trainer(net, l2=0.1), X, y)
    assert err < 1e-6


@pytest.mark.parametrize("output", ["linear", "sigmoid"])
def test_gradient_other_outputs_and_sample_weights(rng, output):
    sizes = [4, 7, 2]
    net = fastnn.Network(sizes, activation="tanh", output=output, dtype="float64",
                         seed=int(rng.integers(2**31)))
    X, y = make_problem(rng, sizes, output, 33)
    w = rng.uniform(0.1, 3.0, 33)
    err = finite_difference_error(fastnn.Trainer(net, l2=0.1), X, y, w)
    assert err < 1e-6


def test_loss_matches_numpy_reference(rng):
    """The compiled objective equals a direct float64 NumPy forward pass."""
    net = fastnn.Network([6, 9, 4, 3], activation=["tanh", "sigmoid"], dtype="float64", seed=3)
    X, y = make_problem(rng, net.sizes, "softmax", 50)
    a = X
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        z = a @ W + b
        a = z if l == net.n_layers - 1 else (np.tanh(z) if l == 0 else 1 / (1 + np.exp(-z)))
    logp = a - a.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    l2 = 0.2
    expected = -logp[np.arange(50), y].mean() + l2 / 2 * sum((W**2).sum() for W in net.weights)
    loss, _ = fastnn.Trainer(net, l2=l2).loss_and_gradient(X, y)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(net.predict_proba(X), np.exp(logp), rtol=1e-10, atol=1e-15)


# Large enough that a step runs in parallel (trainer.SERIAL_STEP_FLOPS).
DETERMINISM_SIZES = [129, 257, 33, 7]
TRAIN_SCRIPT = f"SIZES = {DETERMINISM_SIZES}\n" + """
import hashlib, json, sys
import numpy as np, numba, fastnn
rng = np.random.default_rng(5)
X = rng.standard_normal((1000, 129)); y = rng.integers(0, 7, 1000)
out = {"threads": numba.get_num_threads()}
for dtype in ("float32", "float64"):
    net = fastnn.Network(SIZES, activation=["relu", "tanh"], dtype=dtype, seed=1)
    fastnn.train(net, X, y, epochs=3, batch_size=250, optimizer=fastnn.Adam(lr=0.01), l2=1e-3,
                 seed=2)
    out[dtype] = hashlib.sha256(net.params.tobytes()).hexdigest()
    out[dtype + "_predict"] = hashlib.sha256(net.predict_proba(X).tobytes()).hexdigest()
    # more classes than a vector holds (16 float32 in 512 bits): the vectorised
    # lanes of the softmax delta, whose bits differed between a fresh and a cached run
    wide = fastnn.Network([129, 24, 17], dtype=dtype, seed=3)
    fastnn.train(wide, X, rng.integers(0, 17, 1000), epochs=1, batch_size=250,
                 optimizer=fastnn.SGD(lr=0.1), seed=4)
    out[dtype + "_17_classes"] = hashlib.sha256(wide.params.tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_same_seed_same_bits_fresh_or_cached_with_one_and_two_threads(tmp_path):
    """The first run (kernels freshly compiled into an empty cache) and later
    runs (loaded from numba's cache), at 1 and 2 threads, give the same bits,
    float32 and float64, for training and prediction."""
    n_weights = sum(a * b for a, b in zip(DETERMINISM_SIZES[:-1], DETERMINISM_SIZES[1:]))
    assert 6 * n_weights * 250 >= fastnn.trainer.SERIAL_STEP_FLOPS   # really parallel
    cache = str(tmp_path / "numba-cache")
    results = []
    for threads in ("1", "2", "1", "2"):  # the first run compiles, the others load
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, NUMBA_CACHE_DIR=cache)
        proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], env=env,
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [r.pop("threads") for r in results] == [1, 2, 1, 2]
    assert all(r == results[0] for r in results), results


def test_spiral_reaches_098_training_accuracy():
    X, y = fastnn.spiral()
    net = fastnn.Network([2, 100, 3], activation="relu", seed=0)
    history = fastnn.train(net, X, y, epochs=2000, batch_size=300, l2=1e-3,
                           optimizer=fastnn.SGD(lr=1.0), seed=0)
    assert net.score(X, y) >= 0.98
    assert history.loss[-1] < history.loss[0]


def test_digits_one_hidden_layer_reaches_096_test_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = datasets.load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    net = fastnn.Network([64, 128, 10], activation="relu", seed=0)
    fastnn.train(net, X_train, y_train, epochs=60, batch_size=32,
                 optimizer=fastnn.Adam(lr=1e-3), l2=1e-4, seed=0,
                 validation_data=(X_test, y_test))
    assert net.score(X_test, y_test) >= 0.96


def test_history_validation_and_callbacks_stop_training(rng):
    X, y = make_problem(rng, [3, 5, 2], "softmax", 40)
    net = fastnn.Network([3, 5, 2], seed=0)
    seen = []

    def stop_after_three(logs):
        seen.append((logs["epoch"], sorted(logs)))
        assert logs["network"] is net and logs["trainer"].network is net
        return logs["epoch"] >= 3

    hist = fastnn.train(net, X, y, epochs=10, batch_size=7, validation_data=(X, y),
                        callbacks=[stop_after_three])
    assert len(hist) == 3 and len(hist.val_loss) == 3
    assert seen[-1] == (3, ["accuracy", "epoch", "learning_rate", "loss", "network", "trainer",
                            "val_accuracy", "val_loss", "validation_score"])
    assert all(0 <= a <= 1 for a in hist.accuracy + hist.val_accuracy)


def test_diverging_training_stops_with_last_finite_parameters(rng):
    X, y = make_problem(rng, [4, 8, 3], "softmax", 64)
    net = fastnn.Network([4, 8, 3], seed=0)
    with pytest.raises(FloatingPointError, match="last finite step"):
        fastnn.train(net, X * 1e3, y, epochs=50, optimizer=fastnn.SGD(lr=1e30), batch_size=8)
    assert np.all(np.isfinite(net.params))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 129, 1000])
def test_predict_shapes_and_probabilities(rng, dtype, n):
    net = fastnn.Network([7, 33, 5], activation="sigmoid", dtype=dtype, seed=0)
    X = rng.standard_normal((n, 7))
    P = net.predict_proba(X)
    assert P.shape == (n, 5) and P.dtype == np.dtype(dtype)
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-5)
    assert np.array_equal(net.predict(X), P.argmax(1))


def test_bad_input_is_refused_with_the_argument_name():
    net = fastnn.Network([3, 4, 2])
    with pytest.raises(ValueError, match="X has 4 features"):
        net.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="X contains NaN"):
        fastnn.train(net, np.full((2, 3), np.nan), [0, 1])
    with pytest.raises(ValueError, match="class indices"):
        fastnn.train(net, np.zeros((2, 3)), [0, 2])
    with pytest.raises(ValueError, match="different numbers of samples"):
        fastnn.train(net, np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        fastnn.Trainer(net, batch_size=0)
    with pytest.raises(ValueError, match="activation"):
        fastnn.Network([3, 4, 2], activation="swish")
    with pytest.raises(ValueError, match="sizes"):
        fastnn.Network([3, 0, 2])


PREDICT_SCRIPT = """
import json, numpy as np, fastnn
from fastnn.kernels import microkernel
net = fastnn.Network([37, 70, 5], activation="tanh", seed=3)
X = np.random.default_rng(4).standard_normal((45, 37))
print(json.dumps({"bits": microkernel.VECTOR_BITS, "proba": net.predict_proba(X).tolist()}))
"""


def test_cache_built_for_one_cpu_is_not_used_for_another(tmp_path):
    """numba keys its cache by the CPU it compiles for: asking for another CPU
    (NUMBA_CPU_NAME) with the same cache directory recompiles for that CPU,
    with its own vector width, instead of loading code it cannot run."""
    cache = str(tmp_path / "numba-cache")
    runs = {}
    for cpu in ("host", "haswell", "host"):
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env.pop("NUMBA_CPU_FEATURES", None)
        if cpu != "host":
            env["NUMBA_CPU_NAME"] = cpu
        else:
            env.pop("NUMBA_CPU_NAME", None)
        proc = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT], env=env,
                              capture_output=True, text=True, check=True)
        runs.setdefault(cpu, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs["haswell"][0]["bits"] == 256
    assert runs["host"][0] == runs["host"][1]          # the host's own cache, same bits
    np.testing.assert_allclose(runs["haswell"][0]["proba"], runs["host"][0]["proba"],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prediction_does_not_depend_on_the_other_rows(rng, dtype, monkeypatch):
    """A row's prediction has the same bits alone (the one-row path), in a small
    batch (serial path), in a big batch (parallel blocks, or the same blocks
    one after another on the calling thread: network.SERIAL_PREDICT_WORK),
    and after shuffling."""
    from fastnn import network
    from fastnn.network import PREDICT_BLOCK, SERIAL_PREDICT_ROWS
    net = fastnn.Network([37, 70, 33, 5], activation=["relu", "tanh"], dtype=dtype, seed=1)
    n = 2 * PREDICT_BLOCK + 7
    X = rng.standard_normal((n, 37))
    monkeypatch.setattr(network, "SERIAL_PREDICT_WORK", 0)
    P = net.predict_proba(X)
    perm = rng.permutation(n)
    np.testing.assert_array_equal(net.predict_proba(X[perm]), P[perm])
    for i in (0, 5, PREDICT_BLOCK, n - 1):
        np.testing.assert_array_equal(net.predict_proba(X[i:i + 1]), P[i:i + 1])
    small = X[3:3 + SERIAL_PREDICT_ROWS]
    np.testing.assert_array_equal(net.predict_proba(small), P[3:3 + SERIAL_PREDICT_ROWS])
    monkeypatch.setattr(network, "SERIAL_PREDICT_WORK", 10**12)
    np.testing.assert_array_equal(net.predict_proba(X), P)
    np.testing.assert_array_equal(net.predict_proba(X[perm]), P[perm])


def _numpy_forward(net, X):
    """The network's outputs in float64 NumPy: X W + b, the activations, softmax."""
    acts = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
            "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z}
    a = X.astype(np.float64)
    for l in range(net.n_layers):
        W, b = net._view(l)
        a = a @ W.astype(np.float64) + b.astype(np.float64)
        if l < net.n_layers - 1:
            a = acts[net.activations[l]](a)
    a = np.exp(a - a.max(1, keepdims=True))
    return a / a.sum(1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [[37, 70, 33, 5], [7, 129], [1, 17, 16, 2]])
def test_prediction_of_many_blocks_packs_the_current_weights(rng, dtype, sizes, monkeypatch):
    """A prediction of several blocks packs every W_l once for all of them
    (kernels.step.pack_weights): it matches the NumPy float64 forward pass,
    and after the parameters change in place the next call uses the new
    ones (the packed copy is made per call, never kept)."""
    from fastnn import network
    from fastnn.network import PREDICT_BLOCK
    monkeypatch.setattr(network, "SERIAL_PREDICT_WORK", 0)   # the parallel path, which packs
    net = fastnn.Network(sizes, activation="tanh", dtype=dtype, seed=2)
    X = rng.standard_normal((3 * PREDICT_BLOCK + 5, sizes[0]))
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.predict_proba(X), _numpy_forward(net, X), **tol)
    net.params[:] = rng.standard_normal(net.params.shape[0]).astype(dtype) * 0.3
    P = net.predict_proba(X)
    np.testing.assert_allclose(P, _numpy_forward(net, X), **tol)
    np.testing.assert_array_equal(net.predict_proba(X[-PREDICT_BLOCK:]), P[-PREDICT_BLOCK:])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_few_rows_after_a_big_prediction_use_the_current_weights(rng, dtype, monkeypatch):
    """After a prediction of several blocks (which packs W into the
    prediction workspace) the parameters change: every later prediction,
    of any number of rows (the serial path up to SERIAL_PREDICT_ROWS, one
    parallel block, several), uses the new weights, through Network and
    through a partial_fit of the estimator (a one-row prediction used to
    read the stale packed panels: 0.26 off in a probability)."""
    from fastnn import network
    from fastnn.network import PREDICT_BLOCK, SERIAL_PREDICT_ROWS
    monkeypatch.setattr(network, "SERIAL_PREDICT_WORK", 0)   # the parallel path, which packs
    sizes = [37, 70, 5]
    net = fastnn.Network(sizes, dtype=dtype, seed=2)
    X = rng.standard_normal((2 * PREDICT_BLOCK + 7, sizes[0]))
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for _ in range(2):
        net.predict_proba(X)               # packs every W_l for its blocks
        net.params[:] = rng.standard_normal(net.params.shape[0]).astype(dtype) * 0.3
        for n in (1, 7, SERIAL_PREDICT_ROWS, SERIAL_PREDICT_ROWS + 1, PREDICT_BLOCK,
                  PREDICT_BLOCK + 1):
            np.testing.assert_allclose(net.predict_proba(X[:n]), _numpy_forward(net, X[:n]),
                                       **tol)
    from fastnn import MLPClassifier
    y = np.arange(X.shape[0]) % 3
    clf = MLPClassifier(hidden_layer_sizes=(70,), dtype=dtype, random_state=0,
                        learning_rate_init=0.1)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.predict_proba(X)
    clf.partial_fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X[:1]), clf.predict_proba(X)[:1], **tol)


def _allocations(call):
    """How many arrays numba's runtime allocates during ``call()``, after a
    first call (which compiles or loads from the cache)."""
    from numba.core.runtime import _nrt_python, rtsys
    call()
    _nrt_python.memsys_enable_stats()
    try:
        before = rtsys.get_allocation_stats().alloc
        call()
        return rtsys.get_allocation_stats().alloc - before
    finally:
        _nrt_python.memsys_disable_stats()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_training_and_prediction_allocate_nothing_in_compiled_code(rng, dtype, threads):
    """The compiled epoch and prediction allocate nothing per step or per
    block: numba's allocation count for an epoch of 1 step equals that of 5
    steps, and for predicting 300 rows that of 3000 (what remains is the
    same in both: numba's handles for the array arguments).  Layer widths
    that make the GEMM pack B's panels, A's rows and an edge panel.  (A
    product that allocated its pack buffers cost about 15 % of a step where
    glibc's mmap threshold is fixed, as in a Dask worker.)"""
    from fastnn._parallel import num_threads
    net = fastnn.Network([33, 600, 129, 3], dtype=dtype, seed=0)
    X = rng.standard_normal((3000, 33)).astype(dtype)
    y = rng.integers(0, 3, 3000)
    T = np.eye(3, dtype=dtype)[y]
    w = np.ones(3000, dtype)
    trainer = fastnn.Trainer(net, batch_size=129, seed=0)

    with num_threads(threads):
        one_step = _allocations(lambda: trainer.run_epoch(X, T, w, np.arange(129)))
        five_steps = _allocations(lambda: trainer.run_epoch(X, T, w, np.arange(5 * 129)))
        assert one_step == five_steps
        assert _allocations(lambda: net.forward(X[:300])) == _allocations(lambda: net.forward(X))
        assert _allocations(lambda: net.forward(X[:7])) == _allocations(lambda: net.forward(X[:29]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_few_units_after_many_inputs_allocate_nothing(rng, dtype):
    """A layer of 2 units after 20000 inputs is computed as dot products
    (gemm._dot_product) whose B^T, 2 x 20000, is bigger than the pack buffer
    the tiles need: the workspace is sized for it too, so neither an epoch
    nor a prediction allocates per step or per block."""
    net = fastnn.Network([20000, 2, 3], dtype=dtype, seed=0)
    X = rng.standard_normal((160, 20000)).astype(dtype)
    y = rng.integers(0, 3, 160)
    T = np.eye(3, dtype=dtype)[y]
    w = np.ones(160, dtype)
    trainer = fastnn.Trainer(net, batch_size=32, seed=0)

    assert _allocations(lambda: trainer.run_epoch(X, T, w, np.arange(32))) == \
        _allocations(lambda: trainer.run_epoch(X, T, w, np.arange(160)))
    assert _allocations(lambda: net.forward(X[:1])) == _allocations(lambda: net.forward(X[:29]))
    np.testing.assert_allclose(net.forward(X[:5]), _numpy_forward(net, X[:5]), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_an_input_nan_stops_the_epoch_before_its_batch_updates(rng, dtype, bad):
    """The training step checks each gathered row of X (kernels.step.gather_rows):
    a batch holding NaN or infinity makes the epoch stop before that batch's
    update, so the parameters are those after the batches before it, at 1
    and 2 threads.  The bad column's weights are positive, so -inf makes
    every pre-activation -inf, which ReLU turns into 0: the batch's loss
    is finite and only the check stops it (its update would write NaN)."""
    X = rng.standard_normal((30, 4)).astype(dtype)
    y = rng.integers(0, 3, 30)
    bad_row = 14 + rng.integers(0, 6)   # in the second batch of 10
    for threads in (1, 2):
        runs = []
        for data in (X[:10], X):
            net = fastnn.Network([4, 9, 3], dtype=dtype, seed=0)
            net.weights[0][2] = np.abs(net.weights[0][2])
            trainer = fastnn.Trainer(net, fastnn.SGD(lr=0.1, momentum=0.9), batch_size=10)
            Xd = data.copy()
            if len(Xd) > bad_row:
                Xd[bad_row, 2] = bad
            T = fastnn.trainer.make_targets(net, y[:len(Xd)])
            w = np.ones(len(Xd), dtype=dtype)
            with fastnn._parallel.num_threads(threads):
                loss, _, finite = trainer.run_epoch(Xd, T, w, np.arange(len(Xd)))
            runs.append((net.params.copy(), trainer.steps, finite))
        (one_batch, steps1, finite1), (stopped, steps, finite) = runs
        assert finite1 and not finite and steps1 == steps == 1
        assert stopped.tobytes() == one_batch.tobytes()
