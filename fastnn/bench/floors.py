"""CI floor check: fastnn's training step and prediction against NumPy.

    python -m fastnn.bench.floors check   [--floors benchmarks/floors.json]
    python -m fastnn.bench.floors suggest [--runs 5]

For each training case the ratio (NumPy reference time / fastnn time for the
same step on the same batch), and for prediction (``predict_batch``: 4000
rows, ``predict_row``: one row, 100 calls; NumPy forward pass time / fastnn
``Network.predict_proba`` time, 784-256-10) is measured in one process, the two timed
alternately (so machine load hits both alike), and the median over
``--repeat`` pairs is taken.  ``check`` fails (exit 1) if any ratio is below
its floor in benchmarks/floors.json.  ``suggest`` measures ``--runs`` times,
each in a fresh process, prints the spread and suggested floors (the lowest
run's median times the margin): re-run it when fastnn gets faster and commit
the raised floors; lowering a floor needs a reason in the commit message.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from .cases import CASES, thread_env
from .steps import PREDICT_CASES

# training steps, then prediction (a 4000-row batch, and one row)
ALL_CASES = list(CASES) + list(PREDICT_CASES)

DEFAULT_FLOORS = os.path.join("benchmarks", "floors.json")
# Suggested floor = lowest run median x MARGIN.  See benchmarks/floors.json
# ("margin_reason") for the measured spread that justifies it.
MARGIN = 0.65
# Each timed unit repeats the step until it lasts at least this long, so timer
# resolution and per-call jitter do not dominate tiny cases.
MIN_UNIT_S = 0.02


def _time(fn, k):
    t = time.perf_counter()
    for _ in range(k):
        fn()
    return time.perf_counter() - t


def measure_case(name, repeat):
    """Median (and all) of numpy_time / fastnn_time over ``repeat`` interleaved
    pairs, for a training case (one step) or a prediction case."""
    from .steps import PREDICT_CASES, fastnn_step, numpy_step, predict_pair
    if name in PREDICT_CASES:
        fn, ref = predict_pair(name)
    else:
        fn, ref = fastnn_step(CASES[name]), numpy_step(CASES[name])
    one = min(_time(ref, 1), _time(fn, 1))
    k = max(1, int(MIN_UNIT_S / max(one, 1e-6)))
    ratios = []
    for r in range(repeat):
        # alternate which goes first, so neither always follows the other
        if r % 2:
            t_fn = _time(fn, k)
            t_np = _time(ref, k)
        else:
            t_np = _time(ref, k)
            t_fn = _time(fn, k)
        ratios.append(t_np / t_fn)
    return {"ratio": statistics.median(ratios), "ratios": ratios, "steps_per_unit": k}


def _child(args):
    out = {}
    for name in args.cases.split(","):
        out[name] = measure_case(name, args.repeat)
    print(json.dumps(out))


def measure(cases, repeat, threads):
    """Measure in a fresh child process with pinned threads; {case: result}."""
    cmd = [sys.executable, "-m", "fastnn.bench.floors", "_child", "--cases", ",".join(cases),
           "--repeat", str(repeat)]
    proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"floor measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def target_cpu():
    """The CPU numba compiles for: NUMBA_CPU_NAME when set, else the host's name."""
    import llvmlite.binding as llvm
    from numba.core import config
    name = config.CPU_NAME
    return name if name and name != "host" else llvm.get_host_cpu_name()


def floor_set(spec, cpu=None):
    """(key, floors) of the floor set for this CPU: ``floors_<cpu name>`` when the
    file has one for it (``cpu``, default :func:`target_cpu`), else by the
    GEMM tile's width: ``floors`` for AVX-512 (512-bit vectors),
    ``floors_avx2`` for narrower ones.  The kinds of machine differ by up to
    2x in fastnn / NumPy on the same commit, so one set cannot serve them
    all: AVX2 halves the tile (NumPy's OpenBLAS loses less), and znver4 runs
    512-bit vectors through 256-bit units (the ratios of a znver5 run fell
    by about 40 %), so a set from one kind fails every run on a slower one,
    and a set from the slowest would let a faster machine lose half its
    speed unseen."""
    from ..kernels.microkernel import VECTOR_BITS
    own = f"floors_{cpu or target_cpu()}"
    if own in spec:
        return own, spec[own]
    key = "floors" if VECTOR_BITS >= 512 else "floors_avx2"
    if key not in spec:
        raise SystemExit(f"floor check: {key} (for {VECTOR_BITS}-bit vectors) is not in the "
                         "floors file; measure it with `suggest` on such a machine")
    return key, spec[key]


def check(args):
    """Compare measured ratios with the committed floors; exit status 1 if any is below."""
    with open(args.floors) as f:
        spec = json.load(f)
    key, floors = floor_set(spec)
    threads = args.threads or spec.get("threads")
    res = measure(list(floors), args.repeat, threads)
    failed = []
    print(f"floor check: numpy-reference time / fastnn time per training step or prediction "
          f"(median of {args.repeat} interleaved pairs, threads={threads}; {key})")
    for name, floor in floors.items():
        r = res[name]
        ok = r["ratio"] >= floor
        lo, hi = min(r["ratios"]), max(r["ratios"])
        print(f"  {name:<11} ratio {r['ratio']:7.3f}  (pairs {lo:.3f}..{hi:.3f})  "
              f"floor {floor:7.3f}  {'ok' if ok else 'BELOW FLOOR'}")
        if not ok:
            failed.append(name)
    if failed:
        print(f"floor check FAILED for {', '.join(failed)}")
        return 1
    print("floor check passed")
    return 0


def suggest(args):
    """Measure several times and print the spread and suggested floors."""
    cases = args.cases.split(",")
    runs = []
    for i in range(args.runs):
        runs.append(measure(cases, args.repeat, args.threads))
        print(f"run {i + 1}: " + "  ".join(f"{c} {runs[-1][c]['ratio']:.3f}" for c in cases),
              flush=True)
    floors = {}
    print(f"{'case':<11} {'min':>7} {'median':>7} {'max':>7} {'spread':>7} {'floor':>7}")
    for c in cases:
        meds = [r[c]["ratio"] for r in runs]
        lo, hi = min(meds), max(meds)
        floors[c] = round(lo * MARGIN, 3)
        print(f"{c:<11} {lo:7.3f} {statistics.median(meds):7.3f} {hi:7.3f} "
              f"{hi / lo:7.3f} {floors[c]:7.3f}")
    print(json.dumps({"threads": args.threads, "floors": floors}, indent=1))
    return 0


def main(argv=None):
    """Command line of ``python -m fastnn.bench.floors``."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.floors",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("check", "suggest", "_child"):
        p = sub.add_parser(name)
        p.add_argument("--cases", default=",".join(ALL_CASES))
        p.add_argument("--repeat", type=int, default=9, help="interleaved pairs per case")
        p.add_argument("--threads", type=int, default=None,
                       help="threads for numba and BLAS (default: floors.json's, else all)")
        p.add_argument("--floors", default=DEFAULT_FLOORS)
        p.add_argument("--runs", type=int, default=5, help="suggest: measurements to take")
    args = ap.parse_args(argv)
    if args.cmd == "_child":
        return _child(args)
    if args.cmd == "suggest" and args.threads is None:
        args.threads = os.cpu_count()
    return check(args) if args.cmd == "check" else suggest(args)


if __name__ == "__main__":
    sys.exit(main())
