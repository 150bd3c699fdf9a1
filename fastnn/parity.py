"""Accuracy and fit-time parity with scikit-learn's MLPClassifier.

    python -m fastnn.parity [--repeats 3] [--max-iter 200] [--threads N] [--dtype float32]
                            [--solver adam|lbfgs|both]

For each data set (scikit-learn's bundled digits, iris, wine, breast_cancer,
and make_moons / make_classification): a stratified 75/25 split
(random_state=0), features standardised on the training part, then
``sklearn.neural_network.MLPClassifier`` and ``fastnn.MLPClassifier`` with the
same hyperparameters (hidden_layer_sizes=(100,), adam, learning_rate_init=1e-3,
alpha=1e-4, batch 'auto', max_iter, random_state=0).  The lbfgs table does the
same with solver='lbfgs' (alpha=1e-4, max_iter, max_fun=15000, tol=1e-4) on
digits, iris, wine and breast_cancer, and also compares the final losses
(scikit-learn computes its objective in float64: pass ``--dtype float64`` to
compare like with like).  Fit times are medians of ``--repeats`` fits; fastnn
is warmed up by one untimed fit first, so compilation is excluded.  Needs
scikit-learn (only this command does) and, for lbfgs, scipy.
"""
import argparse
import statistics
import sys
import time
import warnings


def datasets():
    """(name, X, y) of the parity data sets."""
    from sklearn import datasets as d
    yield "digits", *d.load_digits(return_X_y=True)
    yield "iris", *d.load_iris(return_X_y=True)
    yield "wine", *d.load_wine(return_X_y=True)
    yield "breast_cancer", *d.load_breast_cancer(return_X_y=True)
    yield "moons", *d.make_moons(n_samples=1000, noise=0.25, random_state=0)
    yield "classification", *d.make_classification(n_samples=2000, n_features=20,
                                                   n_informative=10, n_classes=3,
                                                   random_state=0)


LBFGS_SETS = ("digits", "iris", "wine", "breast_cancer")


def parity_split(X, y):
    """(X_train, X_test, y_train, y_test): the stratified 75/25 split with
    random_state=0, standardised on the training part."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


def lbfgs_params(max_iter=200):
    """The hyperparameters of the lbfgs rows (scikit-learn's defaults otherwise)."""
    return dict(hidden_layer_sizes=(100,), solver="lbfgs", alpha=1e-4, max_iter=max_iter,
                random_state=0)


def _timed_fit(make, X, y, repeats):
    times, model = [], None
    for _ in range(repeats):
        model = make()
        start = time.perf_counter()
        model.fit(X, y)
        times.append(time.perf_counter() - start)
    return model, statistics.median(times)


def run(repeats=3, max_iter=200, threads=None, dtype="float32", out=sys.stdout):
    """Print the parity table (solver='adam'); returns its rows as dicts."""
    params = dict(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=1e-3,
                  alpha=1e-4, batch_size="auto", max_iter=max_iter, random_state=0)
    rows = []
    head = (f"{'dataset':<15} {'n_train':>7} {'sklearn acc':>11} {'fastnn acc':>10} "
            f"{'sk iters':>8} {'fn iters':>8} {'sklearn fit s':>13} {'fastnn fit s':>12} "
            f"{'speed-up':>8}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, X, y in datasets():
        Xtr, Xte, ytr, yte = parity_split(X, y)
        fn, fn_s, sk, sk_s = _fit_both(params, dtype, threads, Xtr, ytr, repeats)
        row = {"dataset": name, "n_train": len(ytr), "sklearn_acc": sk.score(Xte, yte),
               "fastnn_acc": fn.score(Xte, yte), "sklearn_iter": sk.n_iter_,
               "fastnn_iter": fn.n_iter_, "sklearn_s": sk_s, "fastnn_s": fn_s,
               "speedup": sk_s / fn_s}
        rows.append(row)
        print(f"{name:<15} {row['n_train']:>7} {row['sklearn_acc']:>11.4f} "
              f"{row['fastnn_acc']:>10.4f} {row['sklearn_iter']:>8} {row['fastnn_iter']:>8} "
              f"{sk_s:>13.4f} {fn_s:>12.4f} {row['speedup']:>7.1f}x", file=out, flush=True)
    return rows


def _fit_both(params, dtype, threads, X, y, repeats):
    """(fastnn model, its fit seconds, scikit-learn model, its fit seconds):
    the same parameters in both libraries, fastnn warmed up (compiled) first."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from .estimators import MLPClassifier

    def make():
        return MLPClassifier(**params, dtype=dtype, n_threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning at max_iter, both sides
        make().fit(X, y)
        fn, fn_s = _timed_fit(make, X, y, repeats)
        sk, sk_s = _timed_fit(lambda: SkMLP(**params), X, y, repeats)
    return fn, fn_s, sk, sk_s


def run_lbfgs(repeats=3, max_iter=200, threads=None, dtype="float32", out=sys.stdout):
    """Print the solver='lbfgs' parity table (with the relative difference of
    the final losses); returns its rows as dicts."""
    params = lbfgs_params(max_iter)
    rows = []
    head = (f"{'lbfgs':<15} {'n_train':>7} {'sklearn acc':>11} {'fastnn acc':>10} "
            f"{'sk iters':>8} {'fn iters':>8} {'sklearn loss':>12} {'loss rel diff':>13} "
            f"{'sklearn fit s':>13} {'fastnn fit s':>12} {'speed-up':>8}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, X, y in datasets():
        if name not in LBFGS_SETS:
            continue
        Xtr, Xte, ytr, yte = parity_split(X, y)
        fn, fn_s, sk, sk_s = _fit_both(params, dtype, threads, Xtr, ytr, repeats)
        row = {"dataset": name, "n_train": len(ytr), "sklearn_acc": sk.score(Xte, yte),
               "fastnn_acc": fn.score(Xte, yte), "sklearn_iter": sk.n_iter_,
               "fastnn_iter": fn.n_iter_, "sklearn_loss": sk.loss_, "fastnn_loss": fn.loss_,
               "loss_rel_diff": abs(fn.loss_ - sk.loss_) / abs(sk.loss_),
               "sklearn_s": sk_s, "fastnn_s": fn_s, "speedup": sk_s / fn_s}
        rows.append(row)
        print(f"{name:<15} {row['n_train']:>7} {row['sklearn_acc']:>11.4f} "
              f"{row['fastnn_acc']:>10.4f} {row['sklearn_iter']:>8} {row['fastnn_iter']:>8} "
              f"{sk.loss_:>12.4e} {row['loss_rel_diff']:>13.1e} {sk_s:>13.4f} {fn_s:>12.4f} "
              f"{row['speedup']:>7.1f}x", file=out, flush=True)
    return rows


def main(argv=None):
    """Entry point of ``python -m fastnn.parity``."""
    parser = argparse.ArgumentParser(prog="python -m fastnn.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per library")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="fastnn's n_threads (default: all numba threads)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--solver", choices=["adam", "lbfgs", "both"], default="both",
                        help="which tables to print (default: both)")
    args = parser.parse_args(argv)
    try:
        import sklearn
    except ImportError:
        print("python -m fastnn.parity needs scikit-learn: pip install scikit-learn",
              file=sys.stderr)
        return 2
    import numba
    import numpy as np
    print(f"fastnn parity: scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
          f"numba {numba.__version__}, fastnn dtype {args.dtype}, threads "
          f"{args.threads or numba.config.NUMBA_NUM_THREADS}; fit times are medians of "
          f"{args.repeats}, fastnn warmed up first (compilation excluded)")
    if args.solver in ("adam", "both"):
        run(args.repeats, args.max_iter, args.threads, args.dtype)
    if args.solver in ("lbfgs", "both"):
        if args.solver == "both":
            print()
        run_lbfgs(args.repeats, args.max_iter, args.threads, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
