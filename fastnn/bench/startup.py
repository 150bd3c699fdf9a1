"""The first run: CPU time of ``import fastnn`` + first fits on an empty numba cache.

    python -m fastnn.bench.startup check     [--floors benchmarks/floors.json]
    python -m fastnn.bench.startup measure   [--runs 3]
    python -m fastnn.bench.startup breakdown [--top 15] [--json out.json | --load out.json]

The workload (:data:`FIRST_RUN`), run in a fresh interpreter with a fresh
empty ``NUMBA_CACHE_DIR``: ``import fastnn``, an ``MLPClassifier`` fit and
predict on the spiral data (2-100-3) and an ``MLPClassifier`` fit on
784-64-10 (random data, the shape of MNIST).  The cost is numba compiling
the kernels, which is CPU work; the child's CPU time (user + sys) is steadier
than its wall time on a loaded machine, so that is what is measured.

``check`` runs it once and fails (exit 1) when the CPU time is above the
ceiling ``cold_start.ceiling_cpu_s`` in benchmarks/floors.json.  ``measure``
prints the CPU and wall time of several runs (to set the ceiling).
``breakdown`` prints, for one cold run, the CPU time numba spent compiling
each function (``"numba:compile"`` events, self time: nested compilations
subtracted; fastnn/_compile_log.py).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from .floors import DEFAULT_FLOORS

FIRST_RUN = """
import numpy as np
import fastnn
X, y = fastnn.spiral()
clf = fastnn.MLPClassifier(hidden_layer_sizes=(100,), max_iter=5, random_state=0).fit(X, y)
clf.predict(X)
rng = np.random.default_rng(0)
Xm = rng.random((256, 784)); ym = rng.integers(0, 10, 256)
fastnn.MLPClassifier(hidden_layer_sizes=(64,), max_iter=2, random_state=0).fit(Xm, ym)
"""

# Prepended to FIRST_RUN for the breakdown: log every compilation, print it as
# JSON at exit.  The log is installed before fastnn is imported.
_LOGGED = """
import atexit, json, sys
from fastnn._compile_log import CompileLog
_log = CompileLog().__enter__()
atexit.register(lambda: print(json.dumps(_log.entries), file=sys.__stdout__))
"""


def run_cold(code=FIRST_RUN, env=None):
    """Run ``code`` in a fresh interpreter on a fresh empty numba cache.

    Returns (child CPU seconds, wall seconds, stdout).  CPU is user + sys of
    the child from getrusage(RUSAGE_CHILDREN), so nothing else may run as a
    child of this process meanwhile.
    """
    with tempfile.TemporaryDirectory(prefix="fastnn-cold-") as cache:
        env = dict(os.environ if env is None else env, NUMBA_CACHE_DIR=cache)
        # the child imports fastnn from where this fastnn came from
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start run failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout


def ceiling_for(spec, cpu=None):
    """(key, seconds) of the cold-start ceiling for this CPU: ``ceiling_cpu_s_<cpu>``
    when measured on this kind of CPU (``cpu``, default the one numba compiles
    for), else ``ceiling_cpu_s``.  Compiling is CPU work whose speed depends
    on the machine: the same commit's first run took 1.4-1.7x the CPU
    seconds on a znver3 as on a znver4 (README, "The first run")."""
    from .floors import target_cpu
    key = f"ceiling_cpu_s_{cpu or target_cpu()}"
    if key in spec:
        return key, spec[key]
    return "ceiling_cpu_s", spec["ceiling_cpu_s"]


def check(args):
    """A cold run against the ceiling in floors.json, and a second one if the
    first is above it; exit status 1 if both are.  (The same commit's first
    run took 37.5-50.6 s CPU on one znver3 within an hour, the code before it
    39.4-44.8 s: one slow run is the machine, two in a row a regression.)"""
    with open(args.floors) as f:
        spec = json.load(f)["cold_start"]
    key, ceiling = ceiling_for(spec)
    for attempt in (1, 2):
        cpu, wall, _ = run_cold()
        ok = cpu <= ceiling
        print(f"cold-start check (run {attempt}): import fastnn + first spiral and 784-64-10 "
              f"MLPClassifier fits, empty numba cache: {cpu:.1f} s CPU ({wall:.1f} s wall), "
              f"ceiling {ceiling:.1f} s CPU ({key})  {'ok' if ok else 'ABOVE CEILING'}",
              flush=True)
        if ok:
            return 0
    return 1


def measure(args):
    """Several cold runs; prints each one's CPU and wall seconds, and the worst."""
    cpus = []
    for i in range(args.runs):
        cpu, wall, _ = run_cold()
        cpus.append(round(cpu, 2))
        print(f"run {i + 1}: {cpu:.2f} s CPU, {wall:.2f} s wall", flush=True)
    print(f"cpu seconds {cpus}: worst {max(cpus):.2f}, 1.5 x worst = {1.5 * max(cpus):.1f}")
    return 0


def breakdown(args):
    """One cold run with every compilation logged (or one saved with --json,
    given to --load): the top functions by self time."""
    from .._compile_log import by_function
    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        cpu, wall, entries = saved["cpu"], saved["wall"], saved["entries"]
    else:
        cpu, wall, out = run_cold(_LOGGED + FIRST_RUN)
        entries = json.loads(out.strip().splitlines()[-1])
    rows = by_function(entries)
    total = sum(s for _, s, _ in rows)
    print(f"cold start: {cpu:.1f} s CPU, {wall:.1f} s wall; numba compiling: {total:.1f} s "
          f"CPU in {len(entries)} compilations of {len(rows)} functions")
    shown = [(name.removeprefix("fastnn.").replace(".<locals>", ""), s, n)
             for name, s, n in rows[:args.top]]
    rest = rows[args.top:]
    width = max([len(r[0]) for r in shown] + [len("(999 others)")])
    print(f"{'function':<{width}} {'self CPU s':>10} {'share':>6} {'sigs':>5}")
    for name, s, n in shown:
        print(f"{name:<{width}} {s:10.2f} {s / total:6.1%} {n:5d}")
    if rest:
        s = sum(r[1] for r in rest)
        print(f"{f'({len(rest)} others)':<{width}} {s:10.2f} {s / total:6.1%} "
              f"{sum(r[2] for r in rest):5d}")
    if args.json and not args.load:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "wall": wall, "entries": entries}, f, indent=1)
    return 0


def main(argv=None):
    """Command line of ``python -m fastnn.bench.startup``."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.startup",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="one cold run against the ceiling in floors.json")
    p.add_argument("--floors", default=DEFAULT_FLOORS)
    p = sub.add_parser("measure", help="CPU seconds of several cold runs")
    p.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("breakdown", help="compile time per function of one cold run")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", help="also write every compilation to this file")
    p.add_argument("--load", help="print the table of a run saved with --json (no new run)")
    args = ap.parse_args(argv)
    return {"check": check, "measure": measure, "breakdown": breakdown}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
