"""Training on sparse text-like input: fastnn against scikit-learn's MLPClassifier.

    python -m fastnn.bench.sparse [--rows 4000] [--features 50000] [--density 0.001]
                                  [--hidden 256] [--epochs 3] [--repeats 3] [--threads N]

The data imitates TF-IDF features: every row stores ``density * features``
values (at least 1) in columns drawn from a Zipf-like law (a few frequent
terms, a long tail), positive values, rows scaled to unit length, as a CSR
matrix; 5 classes from a random linear rule on the features.  Both libraries
fit the same estimator settings (adam, batch 200, ``max_iter=epochs``,
``tol=0`` so every epoch runs) on the same matrix, fastnn in float32 (its
default) after a warm-up fit (compilation excluded); the times are the
medians of ``repeats`` fits.  Prints samples/s (rows x epochs / fit time) and
the ratio.
"""
import argparse
import os
import time
import warnings


def text_like(rows, features, density, seed=0, classes=5):
    """(X as scipy CSR float64, y): see the module notes."""
    import numpy as np
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    per_row = max(1, int(round(density * features)))
    # Zipf-like column law: p(rank r) ~ 1 / (r + 10), columns in a random order
    p = 1.0 / (np.arange(features) + 10.0)
    p /= p.sum()
    perm = rng.permutation(features)
    cols = perm[rng.choice(features, size=rows * per_row, p=p)]
    rows_of = np.repeat(np.arange(rows), per_row)
    vals = rng.random(rows * per_row) + 0.1
    X = sp.csr_matrix((vals, (rows_of, cols)), shape=(rows, features))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X)
    R = rng.normal(size=(features, classes))
    y = np.asarray(X @ R).argmax(axis=1)
    return X, y


def _fit_time(make, X, y, repeats):
    import numpy as np
    times = []
    for _ in range(repeats):
        est = make()
        t0 = time.perf_counter()
        est.fit(X, y)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), est


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.sparse", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--features", type=int, default=50000)
    ap.add_argument("--density", type=float, default=0.001)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="numba threads for fastnn (default: all)")
    args = ap.parse_args(argv)

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP

    import fastnn

    X, y = text_like(args.rows, args.features, args.density)
    common = dict(hidden_layer_sizes=(args.hidden,), solver="adam", batch_size=200,
                  max_iter=args.epochs, tol=0.0, n_iter_no_change=args.epochs + 1,
                  random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fastnn.MLPClassifier(**{**common, "max_iter": 1}, n_threads=args.threads).fit(X, y)
        t_fn, fn = _fit_time(lambda: fastnn.MLPClassifier(**common, n_threads=args.threads),
                             X, y, args.repeats)
        t_sk, sk = _fit_time(lambda: SkMLP(**common), X, y, args.repeats)
    n = args.rows * args.epochs
    print(f"sparse text-like: {args.rows} x {args.features}, density {args.density} "
          f"({X.nnz} stored), network {args.features}-{args.hidden}-{len(np.unique(y))}, "
          f"adam, batch 200, {args.epochs} epochs, medians of {args.repeats}")
    print(f"scikit-learn {sklearn.__version__} (float64), fastnn float32, numba threads "
          f"{args.threads or fastnn_threads()}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'library':<14}{'fit s':>10}{'samples/s':>14}{'train acc':>11}")
    print(f"{'fastnn':<14}{t_fn:>10.3f}{n / t_fn:>14.0f}{fn.score(X, y):>11.3f}")
    print(f"{'scikit-learn':<14}{t_sk:>10.3f}{n / t_sk:>14.0f}{sk.score(X, y):>11.3f}")
    print(f"ratio fastnn / scikit-learn (samples/s): {t_sk / t_fn:.2f}")


def fastnn_threads():
    import numba
    return numba.get_num_threads()


if __name__ == "__main__":
    main()
