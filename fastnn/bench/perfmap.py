"""Names for fastnn's compiled code in Linux ``perf``, and a profile of one case's fit.

    python -m fastnn.bench.perfmap [--case spiral] [--threads 1] [--seconds 2] [--top 25]

perf cannot name JIT-compiled code: its samples in numba's functions show as
bare addresses.  For such code perf reads ``/tmp/perf-PID.map``, a line
``START SIZE NAME`` (hexadecimal) per function.  :func:`write_map` writes it
for the running process from the entry point of every compiled fastnn
function loaded so far (among them the GEMM core and the step's bodies,
which kernels/shared.py compiles once and calls by symbol).  numba does not
say how long a function's code is, so each is taken to run up to the next
one's start: a sample in code of no listed function (a callee linked into
several callers, numba's helpers) is charged to the listed function before
it.  Functions that numba or LLVM inlined are part of their caller.

The command trains ``--case`` (fastnn.bench.cases) with ``MLPClassifier.fit``,
samples its own process with ``perf record -p`` for ``--seconds`` once the
kernels are loaded, and prints the top of ``perf report`` by symbol.  (The
2-100-3 spiral at 1 thread, 2026-12-07, rocketlake: gemm_strided 43 %,
shard_rows_kernel 18 %, glibc's log 9 % and expf 7 %, weights_block_kernel
8 %.)
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

from . import cases

_LAST_SIZE = 1 << 16   # the size given to the highest function (nothing follows it)
_MAX_SIZE = 1 << 20    # nor is any function taken to be longer than this


def compiled_functions():
    """[(entry address, "module.function")] of every compiled overload of
    every numba dispatcher in fastnn's modules loaded so far, one per address,
    in address order."""
    found = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("fastnn") or module is None:
            continue
        short = module_name.split(".")[-1]
        for attr, value in list(vars(module).items()):
            overloads = getattr(value, "overloads", None)
            if not isinstance(overloads, dict):
                continue
            for result in list(overloads.values()):
                try:
                    address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
                except Exception:   # e.g. an overload whose library is gone
                    continue
                if address:
                    found.setdefault(address, f"{short}.{getattr(value, '__name__', attr)}")
    return sorted(found.items())


def write_map(path=None):
    """Write the perf map of this process (``/tmp/perf-PID.map``, or ``path``)
    atomically; returns its path."""
    path = path or f"/tmp/perf-{os.getpid()}.map"
    functions = compiled_functions()
    lines = []
    for i, (start, name) in enumerate(functions):
        end = functions[i + 1][0] if i + 1 < len(functions) else start + _LAST_SIZE
        lines.append(f"{start:x} {min(end - start, _MAX_SIZE):x} {name}\n")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".perfmap-")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _estimator(case, epochs):
    from .. import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=case.sizes[1:-1], solver="sgd",
                         momentum=cases.MOMENTUM, nesterovs_momentum=False,
                         batch_size=case.batch, alpha=0.0, learning_rate_init=cases.LR,
                         tol=0.0, n_iter_no_change=10**9, max_iter=epochs, random_state=0)


def profile(case_name, seconds, top, out=sys.stdout):
    """Train ``case_name`` under ``perf record`` of this process for about
    ``seconds``; print the ``top`` symbols of the report.  Returns the exit
    status (2 when perf is missing or cannot record)."""
    perf = shutil.which("perf")
    if perf is None:
        print("perfmap: the 'perf' command was not found (Linux perf: the "
              "linux-tools / linux-perf package)", file=sys.stderr)
        return 2
    case = cases.CASES[case_name]
    X, y = cases.make_data(case, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning: max_iter is the plan here
        _estimator(case, 2).fit(X, y)     # compiles or loads every kernel of the fit
        start = time.perf_counter()
        _estimator(case, 2).fit(X, y)
        # epochs for about a tenth of a second a fit: the fit's own Python,
        # once per call, stays out of the profile
        epochs = max(2, int(0.1 / max(time.perf_counter() - start, 1e-6) * 2))
        map_path = write_map()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data = os.path.join(tmp, "perf.data")
                recorder = subprocess.Popen(
                    [perf, "record", "-F", "4999", "-p", str(os.getpid()), "-o", data, "--",
                     "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                est = _estimator(case, epochs)
                while recorder.poll() is None:
                    est.fit(X, y)
                if recorder.returncode != 0:
                    print("perfmap: perf record failed: "
                          + recorder.stderr.read().decode(errors="replace").strip(),
                          file=sys.stderr)
                    return 2
                report = subprocess.run([perf, "report", "-i", data, "--no-children",
                                         "--sort", "symbol", "--stdio"],
                                        capture_output=True, text=True)
        finally:
            os.unlink(map_path)   # only this profile's report reads it
    # "  35.93%  [.] gemm.gemm_strided   -   -": the percentage and the name
    rows = [re.sub(r"\s+-\s+-\s*$", "", line).rstrip() for line in report.stdout.splitlines()
            if "%" in line and not line.startswith("#")]
    print(f"{case_name}: samples by function, {seconds} s of MLPClassifier.fit", file=out)
    for line in rows[:top]:
        print(line, file=out)
    return 0


def main(argv=None):
    """``python -m fastnn.bench.perfmap``: profile one case's fit; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fastnn.bench.perfmap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="spiral", choices=sorted(cases.CASES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    import numba
    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    return profile(args.case, args.seconds, args.top)


if __name__ == "__main__":
    sys.exit(main())
