"""The three training products against np.dot at every layer of every case.

    python -m fastnn.bench.products [--dtype float32]

Run it with the thread counts pinned (e.g. NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1) and, on machines that set OPENBLAS_CORETYPE, with it
unset, so that NumPy uses the BLAS kernel made for the CPU.  Each product is
timed as the training step performs it, packing included (``product_forward``:
z = a W; ``product_weight_grad``: G += a^T d; ``product_backward_kept``: out =
d W^T from the W^T the step keeps current in its update), against the same
product through np.dot (median of 7 runs of a loop lasting about 2e8 FLOPs).
The last column, ``+W^T``, is the backward product with W^T packed from W
first (``product_backward``): what a product standing alone would cost; the
step pays that transpose only row block by row block inside its update, and
only for layers after the first (the first layer has no backward product).
"""
import argparse
import statistics
import time

import numpy as np

from .cases import CASES


def _median_seconds(fn, reps):
    fn()
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t) / reps)
    return statistics.median(runs)


def shapes():
    """(m, k, n) = (batch, fan_in, fan_out) of every layer of every case,
    deduplicated, and a single-output layer (a binary classifier's or a
    regression's: gemm's dot-product path, as the spiral's 3 classes)."""
    return sorted({(c.batch, a, b) for c in CASES.values()
                   for a, b in zip(c.sizes[:-1], c.sizes[1:])} | {(200, 64, 1)})


def main(argv=None):
    """Print GFLOP/s of fastnn's products and their ratio to np.dot."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.products",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    from ..kernels.gemm import (product_backward, product_backward_kept, product_forward,
                                product_weight_grad)
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"{'m x k x n':<15}{'forward GF/s':>14}{'x np':>6}{'dW GF/s':>10}{'x np':>6}"
          f"{'backward GF/s':>15}{'x np':>6}{'+W^T x np':>11}{'np.dot GF/s':>13}")
    for m, k, n in shapes():
        a = rng.standard_normal((m, k)).astype(dt)
        W = rng.standard_normal((k, n)).astype(dt)
        d = rng.standard_normal((m, n)).astype(dt)
        z, out, G = np.empty((m, n), dt), np.empty((m, k), dt), np.zeros((k, n), dt)
        WT, aT, dT = np.empty((n, k), dt), np.empty((k, m), dt), np.empty((n, m), dt)
        flops = 2.0 * m * k * n
        reps = max(1, int(2e8 / flops))
        pairs = [
            (lambda: product_forward(a, W, WT, z), lambda: np.dot(a, W, out=z)),
            (lambda: product_weight_grad(a, d, aT, dT, G), lambda: np.dot(a.T, d)),
            (lambda: product_backward_kept(d, WT, out), lambda: np.dot(d, W.T, out=out)),
            (lambda: product_backward(d, W, out), lambda: np.dot(d, W.T, out=out)),
        ]
        WT[...] = W.T
        cells = []
        ref_gf = None
        for fast, ref in pairs:
            t_fast = _median_seconds(fast, reps)
            t_ref = _median_seconds(ref, reps)
            cells += [f"{flops / t_fast / 1e9:.1f}", f"{t_ref / t_fast:.2f}"]
            ref_gf = ref_gf or flops / t_ref / 1e9
        print(f"{f'{m}x{k}x{n}':<15}{cells[0]:>14}{cells[1]:>6}{cells[2]:>10}{cells[3]:>6}"
              f"{cells[4]:>15}{cells[5]:>6}{cells[7]:>11}{ref_gf:>13.1f}")


if __name__ == "__main__":
    main()
