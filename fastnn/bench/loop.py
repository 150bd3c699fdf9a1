"""The training loop's per-call cost against the NumPy step (``python -m fastnn.bench.loop``).

For the spiral case (2-100-3, one full batch of 300 rows per epoch, where the
loop's own work shows most) and the mnist case (784-256-10, batches of 128),
the time per training step of: the NumPy reference step, ``MLPClassifier.fit``
(many epochs per call: compiled chunks), ``Trainer.fit`` and one
``partial_fit`` call of one batch.  Each is timed in turn, in one process, and
the medians of --rounds rounds are printed with the throughput ratios.

The process runs with every thread pool pinned to --threads (numba's, so the
estimators' default n_threads follows it, and OpenBLAS's for the NumPy step:
cases.thread_env), re-executing itself if it was started otherwise: with
numba.set_num_threads alone the estimators ran on the whole pool and NumPy
on two BLAS threads while the Trainer ran on one.  After the NumPy step,
whose BLAS threads spin for a while after their last call, the loop pauses
before timing fastnn (at 2 threads an estimator fit timed right after it
measured 878 against 636-706 us a step on mnist shapes).
"""
import argparse
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from . import cases
from .steps import numpy_step


BLAS_SETTLE_S = 0.3   # OpenBLAS's threads spin about 0.1 s after a call before sleeping


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name, rounds=5):
    """{peer: median seconds per training step} for the case ``name``."""
    from .. import SGD, MLPClassifier, Network, Trainer
    case = cases.CASES[name]
    X, y = cases.make_data(case, seed=0)
    rows = case.batch * (10 if name == "mnist" else 1)   # mnist: 10 steps per epoch
    X, y = X[:rows], y[:rows]
    Xb, yb = X[:case.batch], y[:case.batch]
    settings = dict(hidden_layer_sizes=case.sizes[1:-1], solver="sgd", momentum=cases.MOMENTUM,
                    nesterovs_momentum=False, batch_size=case.batch, alpha=0.0,
                    learning_rate_init=cases.LR, tol=0.0, n_iter_no_change=10**9,
                    random_state=0)
    epochs = 2000 if name == "spiral" else 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning: max_iter is the plan here
        fit = MLPClassifier(max_iter=epochs, **settings)
        fit.fit(X, y)
        incremental = MLPClassifier(**settings)
        incremental.partial_fit(Xb, yb, classes=np.arange(case.sizes[-1]))
        trainer = Trainer(Network(list(case.sizes), seed=0),
                          SGD(lr=cases.LR, momentum=cases.MOMENTUM), batch_size=case.batch,
                          seed=0)
        trainer.fit(X, y, epochs=2)
        step = numpy_step(case)
        steps = epochs * -(-len(X) // case.batch)
        calls = 300 if name == "spiral" else 30
        runs = {"numpy": lambda: [step() for _ in range(calls)],
                "fit": lambda: fit.fit(X, y),
                "trainer": lambda: trainer.fit(X, y, epochs=epochs),
                "partial_fit": lambda: [incremental.partial_fit(Xb, yb) for _ in range(calls)]}
        per = {"numpy": calls, "fit": steps, "trainer": steps, "partial_fit": calls}
        times = {k: [] for k in runs}
        for _ in range(rounds):
            for k, run in runs.items():
                times[k].append(_seconds(run) / per[k])
                if k == "numpy":
                    time.sleep(BLAS_SETTLE_S)   # its BLAS threads stop spinning
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m fastnn.bench.loop", description=__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every pool: numba's and NumPy's BLAS")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_NUM_THREADS") != str(args.threads):
        # thread pools are sized when the libraries load: pin them in a child
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "fastnn.bench.loop", *argv],
                               env=cases.thread_env(args.threads))
    for name in ("spiral", "mnist"):
        m = measure(name, args.rounds)
        print(f"{name} ({cases.CASES[name].batch}-row step, us): "
              + ", ".join(f"{k} {v * 1e6:.1f}" for k, v in m.items()))
        print(f"    throughput vs the NumPy step: fit {m['numpy'] / m['fit']:.2f}x, trainer "
              f"{m['numpy'] / m['trainer']:.2f}x, partial_fit {m['numpy'] / m['partial_fit']:.2f}x;"
              f" partial_fit vs fit {m['fit'] / m['partial_fit']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
