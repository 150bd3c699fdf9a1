"""``fastnn compile``: fill numba's cache ahead of time (Docker images, CI).

    fastnn compile [--dtype float32] [--dtype float64] [--sparse] [--quiet]
    python -m fastnn.compile ...

Runs tiny real fits and predictions through the public API -- Network,
Trainer (fit, loss_and_gradient, evaluate), MLPClassifier and MLPRegressor
(fit, partial_fit, predict, predict_proba, score) -- for each dtype, so that
every kernel those paths call is compiled and written to the cache
(``NUMBA_CACHE_DIR``, or ``__pycache__`` beside the sources).  Going through
the public paths rather than a list of kernel names keeps this right when the
kernels change: whatever a fit calls is what gets compiled.  A later process
on the same CPU and cache then compiles nothing.  ``--sparse`` also runs
the sparse-input paths (fastnn/kernels/sparse.py; compiled on first use
otherwise, and never by dense work).
"""
import argparse
import sys
import time
import warnings

import numpy as np

DTYPES = ("float32", "float64")

# Row counts on both sides of the network's serial-prediction limit (one row
# and many rows take different compiled paths) and of the trainer's
# serial-step limit, so every path is taken.
_FEW_ROWS, _MANY_ROWS = 3, 300


def _predict_every_path(predict, network, X, rng):
    """``predict`` (a method predicting with ``network``) of a few rows, of
    many on the calling thread and of enough for the parallel path (rows of
    X, then random ones)."""
    big = rng.standard_normal((network._parallel_prediction_rows(), X.shape[1]))
    for rows in (X[:_FEW_ROWS], X[:_MANY_ROWS], big):
        predict(rows)


def _network_paths(dtype, rng):
    """Network / Trainer: fit (SGD and Adam, every output), gradient, evaluate,
    predictions of a few and of many rows."""
    from .network import Network
    from .optimizers import SGD, Adam
    from .trainer import Trainer
    X = rng.standard_normal((_MANY_ROWS, 4))
    labels = rng.integers(0, 3, _MANY_ROWS)
    targets = {"softmax": labels, "linear": rng.standard_normal((_MANY_ROWS, 3)),
               "sigmoid": (rng.random((_MANY_ROWS, 3)) < 0.5).astype(float)}
    for output, y in targets.items():
        net = Network([4, 8, 3], activation=["tanh"], output=output, dtype=dtype, seed=0)
        for opt, batch in ((SGD(lr=0.01, momentum=0.9), 16), (Adam(), _MANY_ROWS)):
            trainer = Trainer(net, optimizer=opt, batch_size=batch, l2=1e-4, seed=0)
            trainer.fit(X, y, epochs=1, validation_data=(X[:10], y[:10]),
                        sample_weight=np.ones(_MANY_ROWS))
        trainer.loss_and_gradient(X[:_FEW_ROWS], y[:_FEW_ROWS])
        trainer.evaluate(X, y)
        net.predict(X[:_FEW_ROWS])
        _predict_every_path(net.forward, net, X, rng)


def _estimator_paths(dtype, rng):
    """MLPClassifier (multi-class, binary, multi-label) and MLPRegressor: fit
    with both solvers and early stopping, partial_fit, predict, predict_proba."""
    from .estimators import MLPClassifier, MLPRegressor
    X = rng.standard_normal((_MANY_ROWS, 4))
    kw = dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0, dtype=dtype)
    ys = {"multiclass": rng.integers(0, 3, _MANY_ROWS), "binary": rng.integers(0, 2, _MANY_ROWS),
          "multilabel": rng.integers(0, 2, (_MANY_ROWS, 3))}
    for y in ys.values():
        for solver in ("sgd", "adam"):   # the last one, without early stopping, goes on
            clf = MLPClassifier(solver=solver, early_stopping=solver == "sgd", **kw).fit(X, y)
        clf.partial_fit(X[:_FEW_ROWS], y[:_FEW_ROWS])
        clf.predict(X)
        _predict_every_path(clf.predict_proba, clf._network, X, rng)
    MLPRegressor(early_stopping=True, **kw).fit(X, rng.standard_normal(_MANY_ROWS))
    reg = MLPRegressor(**kw).fit(X, rng.standard_normal(_MANY_ROWS))
    reg.partial_fit(X[:_FEW_ROWS], rng.standard_normal(_FEW_ROWS))
    for rows in (_FEW_ROWS, _MANY_ROWS):
        reg.predict(X[:rows])


def _sparse_paths(dtype, rng):
    """Sparse X (fastnn.sparse.SparseRows, so scipy is not needed): Trainer
    fit and gradient, estimator fit (adam, lbfgs), partial_fit, predictions of
    a few and of many rows."""
    from .estimators import MLPClassifier
    from .network import Network
    from .sparse import SparseRows
    from .trainer import Trainer
    n, k = _MANY_ROWS, 6
    dense = np.where(rng.random((n, k)) < 0.4, rng.standard_normal((n, k)), 0.0)
    rows, cols = np.nonzero(dense)
    X = SparseRows(dense[rows, cols].astype(dtype), cols.astype(np.int32),
                   np.searchsorted(rows, np.arange(n + 1)).astype(np.int64), (n, k))
    y = rng.integers(0, 3, n)
    trainer = Trainer(Network([k, 8, 3], dtype=dtype, seed=0), batch_size=16, l2=1e-4)
    trainer.fit(X, y, epochs=1)
    trainer.loss_and_gradient(X, y)
    kw = dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0, dtype=dtype)
    MLPClassifier(solver="lbfgs", **kw).fit(X, y)
    clf = MLPClassifier(**kw).fit(X, y)
    clf.partial_fit(X, y)
    for r in (_FEW_ROWS, _MANY_ROWS):
        clf.predict_proba(X[np.arange(r)])


def warm(dtypes=DTYPES, sparse=False):
    """Compile (or load from the cache) every kernel of the public training and
    prediction paths for each dtype in ``dtypes``.

    Returns a list of (dtype, seconds, compiled signatures) in order.
    """
    from ._compat import ConvergenceWarning
    from ._compile_log import CompileLog
    done = []
    for dtype in dtypes:
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        with CompileLog() as log, warnings.catch_warnings():
            # two-epoch fits on noise do not converge, and need not
            warnings.simplefilter("ignore", ConvergenceWarning)
            _network_paths(dtype, rng)
            _estimator_paths(dtype, rng)
            if sparse:
                _sparse_paths(dtype, rng)
        done.append((dtype, time.perf_counter() - start, len(log.entries)))
    return done


def build_parser(parser=None):
    """Options of ``fastnn compile`` (added to ``parser`` when given)."""
    parser = parser or argparse.ArgumentParser(prog="python -m fastnn.compile")
    parser.description = ("Compile every kernel of fastnn's training and prediction paths "
                          "into numba's cache ahead of time (Docker images, CI).")
    parser.add_argument("--dtype", action="append", choices=DTYPES, dest="dtypes",
                        help="compile for this dtype (repeat for both; default: both)")
    parser.add_argument("--sparse", action="store_true",
                        help="also compile the sparse-input kernels (scipy.sparse X)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def compile_command(args, out=None):
    """Run ``fastnn compile`` with parsed ``args``; returns the exit status."""
    import numba
    out = sys.stdout if out is None else out
    dtypes = tuple(dict.fromkeys(args.dtypes or DTYPES))
    cache = numba.config.CACHE_DIR or "__pycache__ beside fastnn's sources"
    if not args.quiet:
        print(f"fastnn compile: {', '.join(dtypes)} into {cache} "
              f"(CPU {numba.config.CPU_NAME or 'host'})", file=out, flush=True)
    total = 0.0
    for dtype in dtypes:   # one at a time, so each is reported when done
        [(_, seconds, n)] = warm((dtype,), sparse=getattr(args, "sparse", False))
        total += seconds
        if not args.quiet:
            what = f"compiled {n} function signatures" if n else "nothing to compile (cached)"
            print(f"fastnn compile: {dtype}: {what} in {seconds:.1f} s", file=out, flush=True)
    if not args.quiet:
        print(f"fastnn compile: done in {total:.1f} s", file=out)
    return 0


def main(argv=None):
    """Entry point of ``python -m fastnn.compile``."""
    return compile_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
