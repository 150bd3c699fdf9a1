"""Prediction benchmarks: class probabilities for a 20000-row batch, a
64-row batch (one block of rows: a server's micro-batch) and one row,
through ``Network.predict_proba`` and ``MLPClassifier.predict_proba``
(784-256-10, relu, float32), and the GEMM core's speed on a block that stays
in cache.

Each timed call does a fixed amount of work (the batch once, SMALL_BATCH_CALLS
64-row calls, or ONE_ROW_CALLS single-row calls), so two commits time the
same thing.  Compilation and the estimator's fit happen in setup.
"""
import time
import warnings

import numpy as np

from . import _kernels as K

SIZES = (784, 256, 10)
BATCH_ROWS = 20000
ONE_ROW_CALLS = 200   # single-row calls per timed call: well over 1 ms
SMALL_BATCH_ROWS = 64
SMALL_BATCH_CALLS = 20   # 64-row calls per timed call: about 4 ms


def _network():
    import fastnn
    return fastnn.Network(SIZES, activation="relu", seed=0)


def _estimator():
    from fastnn import MLPClassifier
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, SIZES[0]), dtype=np.float32)
    y = np.arange(200) % SIZES[-1]
    clf = MLPClassifier(hidden_layer_sizes=SIZES[1:-1], max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning after one epoch
        clf.fit(X, y)
    return clf


class Predict:
    """predict_proba through the network or the estimator: a big batch, a
    small one (more rows than the one-thread path takes, fewer than two
    blocks) or one row."""

    params = (["network", "estimator"], ["batch", "small_batch", "one_row"])
    param_names = ["api", "rows"]
    timeout = 300

    def setup(self, api, rows):
        self.model = _network() if api == "network" else _estimator()
        rng = np.random.default_rng(2)
        self.X = rng.standard_normal((BATCH_ROWS, SIZES[0]), dtype=np.float32)
        self.row = self.X[:1].copy()
        self.small = self.X[:SMALL_BATCH_ROWS].copy()
        self.model.predict_proba(self.X[:300])   # compile / load from cache
        self.model.predict_proba(self.small)
        self.model.predict_proba(self.row)

    def _work(self, rows):
        """(calls, input) of one timed call."""
        return {"batch": (1, self.X), "small_batch": (SMALL_BATCH_CALLS, self.small),
                "one_row": (ONE_ROW_CALLS, self.row)}[rows]

    def time_predict_proba(self, api, rows):
        calls, data = self._work(rows)
        for _ in range(calls):
            self.model.predict_proba(data)

    def track_predict_rows_per_s(self, api, rows):
        calls, data = self._work(rows)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(calls):
                self.model.predict_proba(data)
            best = min(best, time.perf_counter() - t)
        return calls * data.shape[0] / best

    track_predict_rows_per_s.unit = "rows/s"


class PredictSmallNetwork:
    """predict_proba of 300 rows through a small network (the spiral's
    2-100-3, float32), through the network or the estimator: a batch whose
    work (150k multiply-adds) stays on the calling thread, block after block
    (fastnn.network.SERIAL_PREDICT_WORK), where waking the thread pool would
    cost more than the arithmetic."""

    params = ["network", "estimator"]
    param_names = ["api"]
    timeout = 120
    ROWS = 300
    CALLS = 100   # calls per timed call: a few ms

    def setup(self, api):
        import fastnn
        X, y = fastnn.spiral()
        self.X = np.ascontiguousarray(X[:self.ROWS], dtype=np.float32)
        if api == "network":
            self.model = fastnn.Network([2, 100, 3], seed=0)
        else:
            self.model = fastnn.MLPClassifier(hidden_layer_sizes=(100,), max_iter=2,
                                              random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # ConvergenceWarning after two epochs
                self.model.fit(X, y)
        self.model.predict_proba(self.X)   # compile / load from cache

    def time_predict_proba(self, api):
        for _ in range(self.CALLS):
            self.model.predict_proba(self.X)


class MicroKernel:
    """The GEMM core on a block that stays in L2 (96 x 256 times 256 x 256,
    float32), repeated: the micro-kernel's speed with little memory traffic."""

    timeout = 120
    M, K_, N = 96, 256, 256
    REPS = 400

    def setup(self):
        K.require(K.gemm)
        rng = np.random.default_rng(0)
        self.A = rng.standard_normal((self.M, self.K_), dtype=np.float32)
        self.B = rng.standard_normal((self.K_, self.N), dtype=np.float32)
        self.C = np.empty((self.M, self.N), dtype=np.float32)
        self.bias = np.zeros(self.N, dtype=np.float32)
        self._call()

    def _call(self):
        K.gemm(self.A, self.B, self.C, 0, 0, 0, self.bias, self.C)

    def time_gemm_core(self):
        for _ in range(self.REPS):
            self._call()

    def track_gemm_core_gflops(self):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(self.REPS):
                self._call()
            best = min(best, time.perf_counter() - t)
        return 2.0 * self.M * self.K_ * self.N * self.REPS / best / 1e9

    track_gemm_core_gflops.unit = "GFLOP/s"
