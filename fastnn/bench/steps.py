"""One training step of a case, in fastnn (public API) and in the NumPy
reference, on the same batch and the same initial weights.

A fastnn "step" is ``Trainer.fit`` for one epoch of exactly one batch
(shuffle off), so it includes fit's per-call Python work: that is what a user
pays per call.  Shared by the asv suite and the CI floor check.
"""
import numpy as np

from .cases import LR, MOMENTUM, make_data
from .numpy_mlp import NumpyMLP


def batch_data(case, seed=0):
    """One batch of random data for ``case``."""
    return make_data(case, seed=seed, n_samples=case.batch)


def fastnn_step(case, seed=0):
    """A callable running one fastnn training step of ``case`` (already warmed up)."""
    import fastnn
    X, y = batch_data(case, seed)
    net = fastnn.Network(list(case.sizes), activation="relu", seed=seed)
    trainer = fastnn.Trainer(net, fastnn.SGD(lr=LR, momentum=MOMENTUM),
                             batch_size=case.batch, shuffle=False, seed=seed)

    def step():
        trainer.fit(X, y, epochs=1)
    step()                         # JIT compile (or load the cache) here, not when timed
    return step


def numpy_step(case, seed=0):
    """A callable running one NumPy-reference training step of ``case``."""
    import fastnn
    X, y = batch_data(case, seed)
    net = fastnn.Network(list(case.sizes), activation="relu", seed=seed)
    ref = NumpyMLP(net.weights, net.biases, lr=LR, momentum=MOMENTUM)

    def step():
        ref.step(X, y)
    step()
    return step


def fastnn_epoch(case, seed=0):
    """A callable training one shuffled epoch of ``case`` in fastnn (warmed up)."""
    import fastnn
    X, y = make_data(case, seed=seed)
    net = fastnn.Network(list(case.sizes), activation="relu", seed=seed)
    trainer = fastnn.Trainer(net, fastnn.SGD(lr=LR, momentum=MOMENTUM),
                             batch_size=case.batch, seed=seed)

    def epoch():
        trainer.fit(X, y, epochs=1)
    epoch()
    return epoch


def numpy_epoch(case, seed=0):
    """A callable training one shuffled epoch of ``case`` in the NumPy reference."""
    X, y = make_data(case, seed=seed)
    ref = NumpyMLP.from_sizes(case.sizes, seed=seed, lr=LR, momentum=MOMENTUM)
    rng = np.random.default_rng(seed)

    def epoch():
        ref.epoch(X, y, case.batch, rng)
    epoch()
    return epoch


# Prediction pairs for the floor check: (fastnn callable, NumPy callable) on
# the same weights and rows, 784-256-10 (fastnn.bench.predict).
PREDICT_CASES = {"predict_batch": 4000, "predict_row": 1}
ROW_CALLS = 100   # single-row calls per timed unit


def predict_pair(name, seed=2):
    """(fastnn Network.predict_proba, NumPy forward pass) over the rows of ``name``."""
    from .predict import SIZES, _numpy_forward, _weights, make_predictor
    rows = PREDICT_CASES[name]
    X = np.random.default_rng(seed).standard_normal((rows, SIZES[0]), dtype=np.float32)
    fast = make_predictor("fastnn", None)
    ref = _numpy_forward(*_weights())
    calls = ROW_CALLS if rows == 1 else 1

    def fn():
        for _ in range(calls):
            fast(X)

    def np_fn():
        for _ in range(calls):
            ref(X)
    fn()
    np_fn()
    return fn, np_fn
