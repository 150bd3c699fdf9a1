"""Prediction speed against the peers: a big batch and a single row.

    python -m fastnn.bench.predict [--threads 2] [--rows 20000] [--peers ...]

Every library predicts class probabilities through the same network
(784-256-10, relu, softmax, float32 where the library allows) in its own child
process: ``batch`` is rows per second on a ``--rows`` x 784 batch (median of
``--repeat`` calls), ``one row`` is the median latency of ``predict_proba`` on
one row (microseconds, over a few thousand calls).  fastnn is measured through
``Network.predict_proba`` and through ``MLPClassifier.predict_proba``;
scikit-learn through its ``MLPClassifier.predict_proba``; NumPy as a plain
forward pass (X @ W + b, relu, ..., softmax); PyTorch as ``softmax(model(x))``
under ``torch.inference_mode``.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from .cases import thread_env

SIZES = (784, 256, 10)
LIBS = ("fastnn", "fastnn_estimator", "numpy", "torch", "sklearn")


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    W = [rng.standard_normal((a, b), dtype=np.float32) * np.float32(np.sqrt(2.0 / a))
         for a, b in zip(SIZES[:-1], SIZES[1:])]
    b = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.1) for n in SIZES[1:]]
    return W, b


def _numpy_forward(W, b):
    def proba(X):
        a = X
        for l, (Wl, bl) in enumerate(zip(W, b)):
            a = a @ Wl + bl
            if l < len(W) - 1:
                np.maximum(a, 0, out=a)
        a -= a.max(axis=1, keepdims=True)
        np.exp(a, out=a)
        a /= a.sum(axis=1, keepdims=True)
        return a
    return proba


def make_predictor(lib, threads):
    """A callable X -> class probabilities for ``lib``, with the same weights."""
    W, b = _weights()
    if lib == "numpy":
        return _numpy_forward(W, b)
    if lib == "fastnn":
        import fastnn
        net = fastnn.Network(SIZES, activation="relu")
        for Wl, bl, W0, b0 in zip(net.weights, net.biases, W, b):
            Wl[:] = W0
            bl[:] = b0
        return net.predict_proba
    if lib in ("fastnn_estimator", "sklearn"):
        if lib == "sklearn":
            from sklearn.neural_network import MLPClassifier
        else:
            from fastnn import MLPClassifier
        import warnings
        rng = np.random.default_rng(1)
        X = rng.standard_normal((100, SIZES[0]), dtype=np.float32)
        y = np.arange(100) % SIZES[-1]
        clf = MLPClassifier(hidden_layer_sizes=SIZES[1:-1], max_iter=1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        for Wl, bl, W0, b0 in zip(clf.coefs_, clf.intercepts_, W, b):
            Wl[...] = W0
            bl[...] = b0
        return clf.predict_proba
    if lib == "torch":
        import torch
        if threads:
            torch.set_num_threads(threads)
        layers = []
        for l, (W0, b0) in enumerate(zip(W, b)):
            lin = torch.nn.Linear(*W0.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W0.T.copy()))
                lin.bias.copy_(torch.from_numpy(b0))
            layers.append(lin)
            if l < len(W) - 1:
                layers.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*layers).eval()

        def proba(X):
            with torch.inference_mode():
                return torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
        return proba
    raise ValueError(f"unknown library {lib!r}")


def measure(lib, rows, repeat, threads):
    """(batch rows/s, one-row median seconds, probabilities of 3 rows) for ``lib``."""
    predict = make_predictor(lib, threads)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((rows, SIZES[0]), dtype=np.float32)
    predict(X)                                   # compile / warm up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        predict(X)
        times.append(time.perf_counter() - t)
    one = X[:1].copy()
    for _ in range(200):
        predict(one)
    single = []
    for i in range(3000):
        row = X[i % 64:i % 64 + 1]
        t = time.perf_counter()
        predict(row)
        single.append(time.perf_counter() - t)
    sample = np.asarray(predict(X[:3]), dtype=np.float64).tolist()
    return rows / statistics.median(times), statistics.median(single), sample


def run_child(lib, rows, repeat, threads, native_blas=False):
    """Measure ``lib`` in a fresh process with pinned threads; its result dict."""
    cmd = [sys.executable, "-m", "fastnn.bench.predict", "--child", lib, "--rows", str(rows),
           "--repeat", str(repeat), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=thread_env(threads, native_blas=native_blas),
                          capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results, threads, rows):
    """The prediction comparison as a plain-text table."""
    base = results.get("fastnn")
    lines = [f"{'library':<18}{'batch rows/s':>14}{'one row us':>12}"
             f"{'fastnn/lib (batch)':>20}{'lib/fastnn (1 row)':>20}"]
    lines.append("-" * len(lines[0]))
    for lib, r in results.items():
        ratio_b = f"{base['rows_per_s'] / r['rows_per_s']:.2f}" if base else "-"
        ratio_1 = f"{r['one_row_s'] / base['one_row_s']:.2f}" if base else "-"
        lines.append(f"{lib:<18}{r['rows_per_s']:>14.0f}{r['one_row_s'] * 1e6:>12.1f}"
                     f"{ratio_b:>20}{ratio_1:>20}")
    lines.append(f"threads={threads}  batch={rows} x {SIZES[0]}  network {'-'.join(map(str, SIZES))}"
                 "  (ratios > 1: fastnn faster)")
    return "\n".join(lines)


def available(lib):
    """True when the library for ``lib`` is installed."""
    import importlib.util
    mod = {"torch": "torch", "sklearn": "sklearn"}.get(lib)
    return mod is None or importlib.util.find_spec(mod) is not None


def main(argv=None):
    """Command line of ``python -m fastnn.bench.predict``."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.predict",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", default=",".join(LIBS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--native-blas", action="store_true",
                    help="unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for the peers")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        rps, one, sample = measure(args.child, args.rows, args.repeat, args.threads)
        print(json.dumps({"rows_per_s": rps, "one_row_s": one, "sample": sample}))
        return
    results = {}
    for lib in args.peers.split(","):
        if lib not in LIBS:
            ap.error(f"unknown library {lib!r}; choose from {list(LIBS)}")
        if not available(lib):
            print(f"note: {lib} is not installed; skipped", file=sys.stderr)
            continue
        results[lib] = run_child(lib, args.rows, args.repeat, args.threads, args.native_blas)
        print(f"  {lib:<18} {results[lib]['rows_per_s']:10.0f} rows/s  "
              f"{results[lib]['one_row_s'] * 1e6:8.1f} us/row", file=sys.stderr)
    ref = results.get("numpy", {}).get("sample")
    for lib, r in results.items():  # same weights: the probabilities must agree
        if ref is not None and not np.allclose(r["sample"], ref, rtol=1e-4, atol=1e-6):
            raise SystemExit(f"{lib} predicts different probabilities than numpy: "
                             "the comparison would be meaningless")
    print(format_table(results, args.threads, args.rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": args.rows, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
