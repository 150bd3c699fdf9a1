"""Training benchmarks: one step and one epoch of each case (issue 3), in
fastnn and, for the step, in the plain NumPy reference (fastnn/bench/numpy_mlp.py).

A fastnn step is Trainer.fit for one epoch of exactly one batch, through the
public API.  Each timed call runs STEP_REPS[case] steps (a fixed count, so two
commits time the same work) to stay above 1 ms.  Compilation happens in setup.
"""
import numpy as np

from ._ref import CASE_NAMES, CASES, cases, steps

# steps per timed call: >= 1 ms per call even when fastnn is many times faster
STEP_REPS = {"spiral": 20, "mnist": 4, "mnist_deep": 2, "wide": 1, "tiny_batch": 20}


class TrainStep:
    """time_fastnn_step: STEP_REPS[case] fastnn training steps."""

    params = CASE_NAMES
    param_names = ["case"]
    timeout = 300

    def setup(self, case):
        self.reps = STEP_REPS[case]
        self.fastnn = steps.fastnn_step(CASES[case])

    def time_fastnn_step(self, case):
        for _ in range(self.reps):
            self.fastnn()


class NumpyStep:
    """time_numpy_step: the same STEP_REPS[case] steps in the NumPy reference.

    A class of its own so that its process never starts numba's OpenMP pool:
    idle OpenMP threads spinning beside BLAS's threads slowed NumPy several
    times over here when both lived in one process.
    """

    params = CASE_NAMES
    param_names = ["case"]
    timeout = 300

    def setup(self, case):
        self.reps = STEP_REPS[case]
        self.numpy = steps.numpy_step(CASES[case])

    def time_numpy_step(self, case):
        for _ in range(self.reps):
            self.numpy()


class TrainEpoch:
    """One shuffled epoch of the case's data (cases.CASES[case].n_samples rows)."""

    params = CASE_NAMES
    param_names = ["case"]
    timeout = 300

    def setup(self, case):
        self.epoch = steps.fastnn_epoch(CASES[case])

    def time_fastnn_epoch(self, case):
        self.epoch()

    def track_fastnn_epoch_samples_per_s(self, case):
        import time
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            self.epoch()
            best = min(best, time.perf_counter() - t)
        return CASES[case].n_samples / best

    track_fastnn_epoch_samples_per_s.unit = "samples/s"


class EstimatorFit:
    """The scikit-learn-compatible path, per call: one epoch through
    ``MLPClassifier.fit`` (warm_start, max_iter=1, as a user's loop would) and
    one ``partial_fit`` call on one batch; each includes the estimator's
    per-call Python work (validation, label encoding, the training loop's
    bookkeeping).  mnist: batches of 128 rows; spiral (300 rows, 2-100-3): one
    full-batch step per call, where the per-call overhead dominates."""

    params = (["mnist", "spiral"], ["fit_epoch", "partial_fit"])
    param_names = ["case", "call"]
    timeout = 300
    # asv re-runs setup before every sample; its default sampling (up to 10
    # samples of each of the 4 cases, for each commit and round) took about 4
    # of CI's minutes in `asv continuous`.  Five to seven samples are plenty
    # for the 2x gate (which runs one round: .ci/run).
    number = 1
    repeat = (5, 7, 8.0)
    rounds = 2
    warmup_time = 0.0

    def setup(self, case_name, call):
        import warnings
        try:
            from fastnn import MLPClassifier
        except ImportError:
            raise NotImplementedError("no estimators in this commit")
        case = CASES[case_name]
        X, y = cases.make_data(case, seed=0)
        self.clf = MLPClassifier(hidden_layer_sizes=case.sizes[1:-1], solver="sgd",
                                 momentum=cases.MOMENTUM, nesterovs_momentum=False,
                                 batch_size=case.batch, alpha=0.0,
                                 learning_rate_init=cases.LR, max_iter=1, warm_start=True,
                                 tol=0.0, n_iter_no_change=10**9, random_state=0)
        self.X, self.y = X, y
        self.Xb, self.yb = X[:case.batch], y[:case.batch]
        self.classes = np.arange(case.sizes[-1])
        warnings.simplefilter("ignore")   # ConvergenceWarning after each 1-epoch fit
        # compile / load from the cache: the same code paths as the timed
        # calls, on two batches (setup runs before every sample)
        self.clf.fit(X[:2 * case.batch], y[:2 * case.batch])
        self.clf.partial_fit(self.Xb, self.yb, classes=self.classes)

    def time_estimator(self, case_name, call):
        if call == "fit_epoch":
            for _ in range(FIT_CALLS[case_name]):
                self.clf.fit(self.X, self.y)
        else:
            for _ in range(PARTIAL_FIT_CALLS):
                self.clf.partial_fit(self.Xb, self.yb)


PARTIAL_FIT_CALLS = 10   # one call is about 0.5 ms of arithmetic: several per timed call
# One spiral fit (one 300-row step) is 0.6-1.3 ms: timed one call at a time,
# two runs of identical code differed by 2.08x in the CI gate (2026-12-02).
FIT_CALLS = {"spiral": 10, "mnist": 1}
