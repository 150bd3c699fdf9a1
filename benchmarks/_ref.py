"""The benchmark harness and NumPy reference, loaded from *this checkout*.

asv benchmarks each commit with the suite of the checkout it runs from.  The
NumPy reference, the cases and the step helpers live in fastnn/bench/; they are
loaded here from the working tree (as the package ``fastnn_benchref``), not
from the fastnn installed for the commit under test, so that two commits are
compared against the very same reference and harness, and a commit from
before fastnn/bench existed can still be benchmarked.
"""
import importlib.util
import os
import sys

_NAME = "fastnn_benchref"
_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "fastnn", "bench")


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(
        _NAME, os.path.join(_DIR, "__init__.py"), submodule_search_locations=[_DIR])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


_load()
from fastnn_benchref import cases, steps  # noqa: E402
from fastnn_benchref.numpy_mlp import NumpyMLP  # noqa: E402

CASES = cases.CASES
CASE_NAMES = list(CASES)

__all__ = ["cases", "steps", "NumpyMLP", "CASES", "CASE_NAMES"]
