"""Child process of the peer comparison: one library, one case, JSON out.

    python -m fastnn.bench.run_peer --lib numpy --case mnist --repeat 5

The parent sets the thread environment (cases.thread_env) before this process
starts, so every pool (numba, OpenMP, BLAS, torch) sees the same thread count.
The first epoch (with any JIT compilation) is run and discarded; then
``repeat`` epochs are timed one by one.  ``--lib sgemm`` instead times
float32 np.dot at 1024^3 and reports GFLOP/s.
"""
import argparse
import json
import os
import time


def time_sgemm(repeat, n=1024):
    """Median seconds of a float32 n x n x n np.dot (after one warm-up)."""
    import numpy as np
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), dtype=np.float32)
    np.dot(A, B, out=C)
    times = []
    for _ in range(max(repeat, 5)):
        t = time.perf_counter()
        np.dot(A, B, out=C)
        times.append(time.perf_counter() - t)
    return times, 2.0 * n**3


def main(argv=None):
    """Entry point of the child; prints one JSON object on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--case", default="mnist")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--samples", type=int, default=None,
                    help="override the case's samples per epoch (tests use a few)")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("NUMBA_NUM_THREADS", "0")) or None
    if args.lib == "sgemm":
        times, flops = time_sgemm(args.repeat)
        out = {"lib": "sgemm", "times": times, "flops": flops}
    else:
        from .cases import CASES, make_data
        from .peers import make_epoch
        case = CASES[args.case]
        X, y = make_data(case, seed=0, n_samples=args.samples)
        epoch = make_epoch(args.lib, case, X, y, threads)
        epoch()                                   # compile / warm up, not timed
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            epoch()
            times.append(time.perf_counter() - t)
        out = {"lib": args.lib, "case": case.name, "times": times, "n_samples": X.shape[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
