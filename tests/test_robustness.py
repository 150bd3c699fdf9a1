"""Interruptions, checkpoints, concurrent fits, broken files, and properties
that must hold for any shape (hypothesis)."""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import fastnn

from .conftest import central_difference, rows_off_relu_kinks


def problem(seed, n=500, d=20, classes=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def fresh_trainer(optimizer=None, sizes=(20, 33, 5), seed=0):
    net = fastnn.Network(list(sizes), activation="tanh", seed=seed)
    return fastnn.Trainer(net, optimizer=optimizer or fastnn.Adam(lr=0.01), batch_size=64,
                          l2=1e-3, seed=seed)


@pytest.mark.parametrize("optimizer", [fastnn.Adam(lr=0.01), fastnn.SGD(0.1, 0.9, True)])
def test_resuming_a_checkpoint_gives_the_same_bits(tmp_path, optimizer):
    X, y = problem(1)
    straight = fresh_trainer(optimizer)
    straight.fit(X, y, epochs=6)
    path = tmp_path / "ckpt.npz"
    first = fresh_trainer(optimizer)
    first.fit(X, y, epochs=4, checkpoint=path, checkpoint_every=2)
    resumed = fastnn.Trainer.resume(path)
    assert len(resumed.history) == 4
    resumed.fit(X, y, epochs=2)
    assert resumed.network.params.tobytes() == straight.network.params.tobytes()
    assert resumed.history.loss == straight.history.loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_a_checkpoint_is_not_a_model_and_vice_versa(tmp_path):
    X, y = problem(2)
    trainer = fresh_trainer()
    trainer.fit(X, y, epochs=1, checkpoint=tmp_path / "c.npz")
    with pytest.raises(fastnn.ModelFileError, match="expected a network"):
        fastnn.load(tmp_path / "c.npz")
    fastnn.save(trainer.network, tmp_path / "m.npz")
    with pytest.raises(fastnn.ModelFileError):
        fastnn.Trainer.resume(tmp_path / "m.npz")


def _interrupted_on_call(real, n):
    """``real`` wrapped to raise KeyboardInterrupt when its n-th call has
    returned (the compiled work finished, but Ctrl-C lands before Python
    records it); the wrapper's ``calls`` counts them."""
    def run_then_interrupt(*args):
        out = real(*args)
        run_then_interrupt.calls += 1
        if run_then_interrupt.calls == n:
            raise KeyboardInterrupt
        return out
    run_then_interrupt.calls = 0
    return run_then_interrupt


def _rolled_back_like_two_epochs(trainer, reference, history, X, y):
    """The interrupted trainer holds the reference's two epochs, bit for bit,
    and continues exactly like it."""
    assert trainer.interrupted and len(history) == 2
    assert trainer.network.params.tobytes() == reference.network.params.tobytes()
    assert trainer.state1.tobytes() == reference.state1.tobytes()
    assert trainer.steps == reference.steps
    trainer.fit(X, y, epochs=1)
    reference.fit(X, y, epochs=1)
    assert trainer.network.params.tobytes() == reference.network.params.tobytes()


def test_interrupt_inside_an_epoch_rolls_back_to_the_last_completed_one(monkeypatch):
    X, y = problem(3)
    reference = fresh_trainer()
    reference.fit(X, y, epochs=2)
    trainer = fresh_trainer()
    run_epoch = _interrupted_on_call(trainer.run_epoch, 3)
    monkeypatch.setattr(trainer, "run_epoch", run_epoch)
    with pytest.warns(UserWarning, match="state after epoch 2"):
        history = trainer.fit(X, y, epochs=10)
    monkeypatch.undo()
    _rolled_back_like_two_epochs(trainer, reference, history, X, y)


def test_interrupt_after_a_compiled_chunk_rolls_back_to_the_chunk_before(monkeypatch):
    """The compiled chunks' rollback point is kept by each chunk's first step
    (a deferred snapshot): Ctrl-C landing after a chunk's compiled call
    returned undoes that chunk, bit for bit, optimizer state included."""
    from fastnn.kernels import run as run_kernels
    X, y = problem(5)
    monkeypatch.setattr(fastnn.trainer, "CHUNK_ROWS", 500 * 2)   # chunks of 2 epochs
    reference = fresh_trainer(fastnn.SGD(0.1, 0.9))
    reference.fit(X, y, epochs=2)
    trainer = fresh_trainer(fastnn.SGD(0.1, 0.9))
    train_epochs = _interrupted_on_call(run_kernels.train_epochs, 2)
    monkeypatch.setattr(run_kernels, "train_epochs", train_epochs)
    with pytest.warns(UserWarning, match="state after epoch 2"):
        history = trainer.fit(X, y, epochs=10)
    assert train_epochs.calls == 2
    monkeypatch.undo()
    _rolled_back_like_two_epochs(trainer, reference, history, X, y)


def test_real_sigint_during_fit_leaves_a_consistent_model():
    X, y = problem(4, n=4000, d=100)
    trainer = fresh_trainer(sizes=(100, 256, 5))
    timers = []

    def send_sigint_soon(logs):
        # once compiled and running, Ctrl-C lands at an arbitrary point of a later epoch
        if logs["epoch"] == 2:
            timers.append(threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)))
            timers[0].start()
        return False

    try:
        with pytest.warns(UserWarning, match="interrupted"):
            trainer.fit(X, y, epochs=100_000, callbacks=[send_sigint_soon])
    finally:
        for t in timers:
            t.cancel()
    done = len(trainer.history)
    assert trainer.interrupted and done >= 2
    reference = fresh_trainer(sizes=(100, 256, 5))
    reference.fit(X, y, epochs=done)
    assert trainer.network.params.tobytes() == reference.network.params.tobytes()


def test_two_fits_in_two_threads_both_work_and_match_a_serial_fit():
    X, y = problem(5)
    serial = fresh_trainer()
    serial.fit(X, y, epochs=3)
    trainers = [fresh_trainer() for _ in range(2)]
    errors = []

    def fit(t):
        try:
            t.fit(X, y, epochs=3)
            t.network.predict(X)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fit, args=(t,)) for t in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for t in trainers:
        assert t.network.params.tobytes() == serial.network.params.tobytes()


CONCURRENT_WORKQUEUE = """
import threading, numpy as np, numba, fastnn
rng = np.random.default_rng(0)
X = rng.standard_normal((2000, 50)); y = rng.integers(0, 4, 2000)
def fit():
    net = fastnn.Network([50, 64, 4], seed=0)
    fastnn.train(net, X, y, epochs=5, batch_size=64)
    net.predict(X)
threads = [threading.Thread(target=fit) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print("layer", numba.threading_layer())
"""


def test_concurrent_fits_do_not_crash_the_workqueue_layer():
    """workqueue aborts the process on concurrent parallel calls unless guarded."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    proc = subprocess.run([sys.executable, "-c", CONCURRENT_WORKQUEUE], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer workqueue" in proc.stdout


def saved_model_bytes(tmp_path):
    net = fastnn.Network([4, 7, 3], activation="sigmoid", seed=0)
    fastnn.save(net, tmp_path / "m.npz", extra={"classes": [0, 1, 2]})
    return (tmp_path / "m.npz").read_bytes()


def test_fuzzed_model_files_fail_cleanly(tmp_path, rng):
    """Random byte flips and truncations: a ModelFileError or a sound network,
    never another exception and never a crash."""
    good = saved_model_bytes(tmp_path)
    path = tmp_path / "fuzz.npz"
    outcomes = {"error": 0, "loaded": 0}
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            net = fastnn.load(path)
        except fastnn.ModelFileError:
            outcomes["error"] += 1
            continue
        outcomes["loaded"] += 1
        assert np.isfinite(net.params).all()
        assert net.predict_proba(np.zeros((2, net.sizes[0]))).shape == (2, net.sizes[-1])
    assert outcomes["error"] > 0


def test_hand_crafted_headers_are_refused(tmp_path):
    from fastnn import io
    net = fastnn.Network([3, 2])
    base = io.network_meta(net)
    cases = {
        "huge": dict(base, sizes=[10**9, 10**9], n_params=10**18 + 10**9),
        "version": dict(base, version=99),
        "sizes": dict(base, sizes="3,2"),
        "activation": dict(base, sizes=[3, 4, 2], activations=["rm -rf"], n_params=26),
        "dtype": dict(base, dtype="object"),
    }
    for name, meta in cases.items():
        path = tmp_path / f"{name}.npz"
        io.write_archive(path, meta, {"params": np.zeros(net.n_params, np.float32)})
        with pytest.raises(fastnn.ModelFileError):
            fastnn.load(path)


ACTIVATIONS = st.sampled_from(["relu", "sigmoid", "tanh", "identity"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5), act=ACTIVATIONS,
       n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_property_gradient_matches_finite_differences(sizes, act, n, seed):
    rng = np.random.default_rng(seed)
    net = fastnn.Network(sizes, activation=act, dtype="float64", seed=seed)
    for b in net.biases:                      # off relu's kink at z = 0
        b[:] = rng.uniform(0.05, 0.5, b.shape)
    X = rng.standard_normal((n, sizes[0]))
    y = rng.integers(0, sizes[-1], n)
    keep = rows_off_relu_kinks(net, X)
    assume(keep.any())
    X, y = X[keep], y[keep]
    trainer = fastnn.Trainer(net, l2=float(rng.uniform(0, 0.5)))
    _, grad = trainer.loss_and_gradient(X, y)
    h = 1e-6
    for i in rng.choice(net.n_params, size=min(net.n_params, 12), replace=False):
        numeric = central_difference(net.params, i, lambda: trainer.loss_and_gradient(X, y)[0],
                                     h)
        assert abs(numeric - grad[i]) <= 1e-6 * max(1.0, np.abs(grad).max())


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=4), act=ACTIVATIONS,
       n=st.integers(1, 300), batch=st.integers(1, 64),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**31 - 1))
@example(sizes=[1, 1, 1, 3], act="identity", n=208, batch=1, dtype="float32", seed=0)
def test_property_training_and_prediction_shapes(sizes, act, n, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    net = fastnn.Network(sizes, activation=act, dtype=dtype, seed=seed)
    X = rng.standard_normal((n, sizes[0]))
    diverged = False
    try:
        fastnn.train(net, X, rng.integers(0, sizes[-1], n), epochs=2, batch_size=batch,
                     optimizer=fastnn.SGD(0.05, 0.9), seed=seed)
    except FloatingPointError:   # some draws diverge (e.g. 1-2-2-2 identity, batch 1):
        assert np.isfinite(net.params).all()   # then the last finite step is kept
        diverged = True
    P = net.predict_proba(X)
    assert P.shape == (n, sizes[-1]) and P.dtype == np.dtype(dtype)
    if not diverged:
        # (the last finite step of a diverged run can hold weights of 1e17,
        # whose float32 logits overflow: 1-1-1-3 identity, batch 1, n=208, seed 0)
        assert np.isfinite(P).all()
        np.testing.assert_allclose(P.sum(axis=1), 1.0,
                                   rtol=1e-5 if dtype == "float32" else 1e-12)
    assert net.predict(X).shape == (n,)
