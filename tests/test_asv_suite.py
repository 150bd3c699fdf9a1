"""Every benchmark of the asv suite (benchmarks/) runs once, in this process.

asv itself starts a fresh interpreter for every parameter set of every
benchmark (about 130 of them), each importing fastnn and loading the numba
cache: in CI that "run everything once" pass (`asv run --quick`) cost about
six minutes.  Here each parameter set is one test: asv's own calling
sequence (setup, the benchmark, teardown), with NotImplementedError from
setup counted as a failure, since the test environment has every extra that
a benchmark may skip for.  `asv check` (in .ci/run) still checks that asv
discovers the suite, and `asv continuous` runs the gated benchmarks through
asv itself.

The cold-start timeraw is left out: it compiles everything on an empty
cache (about a minute of CPU), and `python -m fastnn.bench.startup check`
times a superset of it in CI.
"""
import importlib
import inspect
import itertools
import pkgutil
import subprocess
import sys
import warnings

import pytest

import benchmarks

PREFIXES = ("time_", "track_", "peakmem_", "timeraw_")
LEFT_TO_THE_STARTUP_CHECK = {"timeraw_import_first_fit_cold"}


def _parameter_sets(cls):
    """The parameter tuples asv calls a benchmark class with (asv's rule: a
    list of lists is several parameters, a flat list is one)."""
    params = getattr(cls, "params", None)
    if not params:
        return [()]
    if all(isinstance(p, (list, tuple)) for p in params):
        return list(itertools.product(*params))
    return [(p,) for p in params]


def _suite():
    """(id, class, parameters, method names) for every benchmark of the suite."""
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if not info.name.startswith("bench_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            methods = sorted(m for m in dir(cls) if m.startswith(PREFIXES)
                             and m not in LEFT_TO_THE_STARTUP_CHECK)
            if not methods:
                continue
            for params in _parameter_sets(cls):
                label = "-".join(str(p) for p in params)
                yield (f"{info.name}.{cls.__name__}" + (f"[{label}]" if label else ""),
                       cls, params, methods)


SUITE = list(_suite())


def test_the_suite_is_found():
    """Guards the discovery above: a renamed module or prefix would make
    the test below silently check nothing."""
    names = {name.split("[")[0] for name, *_ in SUITE}
    assert {"bench_kernels.Gemm", "bench_training.TrainStep", "bench_predict.Predict",
            "bench_startup.Startup"} <= names
    assert len(SUITE) >= 50


def _run_timeraw(method):
    """A timeraw benchmark returns (code, setup) for asv to time in a new
    interpreter: run it there once."""
    code, setup = method()
    subprocess.run([sys.executable, "-c", setup + "\n" + code], check=True, timeout=600)


@pytest.mark.parametrize("cls,params,methods", [s[1:] for s in SUITE],
                         ids=[s[0] for s in SUITE])
def test_benchmark_runs_once(cls, params, methods):
    """setup, each benchmark method once, teardown: as asv calls them."""
    bench = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(bench, "setup"):
            bench.setup(*params)
        try:
            for name in methods:
                method = getattr(bench, name)
                if name.startswith("timeraw_"):
                    _run_timeraw(method)
                    continue
                value = method(*params)
                if name.startswith("track_"):
                    assert value is not None and value > 0, f"{name} returned {value!r}"
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*params)
