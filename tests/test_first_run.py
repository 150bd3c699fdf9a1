"""The first run on a cold numba cache: the one-line notice, ``fastnn compile``,
the compile log and the cold-start check's logic (its timing lives in the CI
step, not here).  The subprocess tests each compile once into their own empty
NUMBA_CACHE_DIR."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba.core import event

from fastnn import _compile_notice
from fastnn._compile_log import CompileLog
from fastnn.bench import startup

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cache, code=None):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                          if p))
    cmd = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


class _FakeDispatcher:
    def __init__(self, module):
        self.py_func = type("f", (), {"__module__": module, "__qualname__": "f"})


def _compile_event(module):
    return event.trigger_event("numba:compile", data={"dispatcher": _FakeDispatcher(module),
                                                      "args": ()})


def test_notice_prints_once_and_only_for_fastnn_functions():
    out = io.StringIO()
    with event.install_listener("numba:compile", _compile_notice._Notice(out)):
        with _compile_event("numba.cpython.unicode"):   # numba's own helper: no line
            pass
        assert out.getvalue() == ""
        for _ in range(3):
            with _compile_event("fastnn.kernels.step"):
                with _compile_event("fastnn.kernels.gemm"):   # nested, as numba's are
                    pass
    assert out.getvalue() == _compile_notice.MESSAGE + "\n"


def test_compile_log_self_times_add_up_to_the_outer_time():
    with CompileLog() as log:
        with _compile_event("fastnn.outer"):
            with _compile_event("fastnn.inner"):
                pass
            with _compile_event("fastnn.inner"):
                pass
    assert [e["name"] for e in log.entries] == ["fastnn.inner.f", "fastnn.inner.f",
                                                "fastnn.outer.f"]
    outer = log.entries[-1]
    assert outer["self_seconds"] + sum(e["seconds"] for e in log.entries[:2]) \
        == pytest.approx(outer["seconds"], abs=1e-9)
    assert log.total_seconds() == pytest.approx(outer["seconds"], abs=1e-9)
    assert {n: k for n, _, k in log.by_function()} == {"fastnn.inner.f": 2, "fastnn.outer.f": 1}


# After `fastnn compile`, a process doing the first-run workload of the
# cold-start check, and a prediction big enough for the parallel path (which
# that workload's small ones no longer take), compiles nothing: every
# compile event is logged.
_NOTHING_COMPILED = """
import json
from fastnn._compile_log import CompileLog
from fastnn import _compile_notice
log = CompileLog().__enter__()
_compile_notice.enable()
exec(WORKLOAD)
import numpy as np
import fastnn
big = fastnn.Network([784, 64, 10], seed=0)
big.predict_proba(np.zeros((big._parallel_prediction_rows(), 784), np.float32))
import numba
from fastnn.kernels import step
misses = sum(sum(d.stats.cache_misses.values()) for d in vars(step).values()
             if isinstance(d, numba.core.registry.CPUDispatcher))
from fastnn.kernels import gemm
cores = sorted(str(argtypes[2].dtype) for argtypes in gemm.GEMM_CORE.symbols)
print(json.dumps({"compiled": [e["name"] for e in log.entries], "misses": misses,
                  "cores": cores}))
"""


def test_first_cli_run_prints_the_notice_once_and_fastnn_compile_leaves_nothing(tmp_path):
    """One cold cache (each cold compile costs CI a minute or more): the first
    `fastnn train` prints the notice once, a second one does not; `fastnn
    compile` then compiles what training did not need, after which the
    cold-start check's workload compiles nothing, and a second `fastnn
    compile` finds everything cached."""
    cache = tmp_path / "numba-cache"
    args = ["fastnn", "train", "--epochs", "3", "--quiet"]
    cold = _run(args, cache)
    assert cold.stderr.count(_compile_notice.MESSAGE) == 1, cold.stderr
    assert "training accuracy" in cold.stdout
    warm = _run(args, cache)
    assert _compile_notice.MESSAGE not in warm.stderr, warm.stderr
    assert "training accuracy" in warm.stdout
    done = _run(["fastnn", "compile", "--dtype", "float32"], cache)
    assert "float32: compiled" in done.stdout, done.stdout
    code = f"WORKLOAD = {startup.FIRST_RUN!r}\n" + _NOTHING_COMPILED
    after = _run(None, cache, code=code)
    # ... and, training in float32 alone, never compiles or loads the float64 core
    assert json.loads(after.stdout.strip().splitlines()[-1]) == {
        "compiled": [], "misses": 0, "cores": ["float32"]}
    assert _compile_notice.MESSAGE not in after.stderr
    again = _run(["fastnn.compile", "--dtype", "float32"], cache)
    assert "float32: nothing to compile (cached)" in again.stdout, again.stdout


_PREDICT_FLOAT64 = """
import json
import sys
import numpy as np
import fastnn
from fastnn.kernels import gemm
published_at_import = len(gemm.GEMM_CORE.symbols)
net = fastnn.Network([5, 9, 3], seed=1, dtype="float64")
X = np.linspace(-1, 1, 35).reshape(7, 5)
out = net.predict_proba(X)
# numba's extra implementations (np.linalg's among them) are registered when
# something is compiled, not when cached code loads (_jit._LoadingCache) ...
registered = "numba.np.linalg" in sys.modules
# ... and a compilation after such loads still finds them
import numba
sorted_values = numba.njit(lambda v: np.sort(v))(np.array([3.0, 1.0, 2.0])).tolist()
print(json.dumps({"at_import": published_at_import, "out": out.tolist(),
                  "cores": sorted(str(a[2].dtype) for a in gemm.GEMM_CORE.symbols),
                  "registered": registered, "sorted": sorted_values}))
"""


def test_a_cached_caller_of_a_core_not_yet_published_loads_and_runs(tmp_path):
    """The GEMM cores are published lazily (kernels/shared.py): nothing at
    import, and a caller loaded from the cache in a fresh process (here the
    float64 prediction, in a process that never compiled it) gets its core
    published before it loads: no unresolved symbol (a segfault), the same
    bits as the process that compiled it, and only the dtype it needs.
    Loading cached code does not register numba's other implementations
    (about 0.1 s of a warm process), and numba still compiles afterwards."""
    cache = tmp_path / "numba-cache"
    first = json.loads(_run(None, cache, code=_PREDICT_FLOAT64).stdout.splitlines()[-1])
    later = json.loads(_run(None, cache, code=_PREDICT_FLOAT64).stdout.splitlines()[-1])
    assert first["at_import"] == later["at_import"] == 0
    assert first["cores"] == later["cores"] == ["float64"]
    assert later["out"] == first["out"]
    assert np.allclose(np.sum(first["out"], axis=1), 1.0)
    assert first["registered"] and not later["registered"]
    assert first["sorted"] == later["sorted"] == [1.0, 2.0, 3.0]


_COMPILED_IN_RUN = """
import json
from fastnn._compile_log import CompileLog
with CompileLog() as log:
    import numpy as np
    import fastnn
    fastnn.Network([5, 9, 3], seed=1, dtype="float64").predict_proba(np.ones((7, 5)))
print(json.dumps(sorted({e["name"] for e in log.entries})))
"""


def test_a_change_to_one_compiled_file_recompiles_the_callers_in_the_others(tmp_path):
    """numba keys a cached function by its own file's source, yet the cached
    code holds its callees from other files (inlined, or called by a shared
    symbol that another version may not define: "LLVM ERROR: Symbol not
    found", the process aborted, seen when asv timed two commits in one
    environment).  fastnn stamps its compiled functions with all of their
    sources (_jit.py): after an edit of kernels/gemm.py alone, a copy of the
    package recompiles the prediction of kernels/step.py rather than load it."""
    import shutil
    package = tmp_path / "src"
    shutil.copytree(ROOT / "fastnn", package / "fastnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"),
               PYTHONPATH=str(package))

    def compiled():
        proc = subprocess.run([sys.executable, "-c", _COMPILED_IN_RUN], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    assert any("predict_block_kernel" in f for f in compiled())
    assert not any("predict_block_kernel" in f for f in compiled())   # loaded from the cache
    with open(package / "fastnn" / "kernels" / "gemm.py", "a") as f:
        f.write("\n# an edit of the GEMM's file only\n")
    assert any("predict_block_kernel" in f for f in compiled())


def test_the_cache_stamp_covers_every_compiled_source(tmp_path):
    """The stamp changes with any of the files it covers, and every compiled
    function of fastnn carries it."""
    from fastnn import _jit
    from fastnn.kernels import gemm, run, sparse, step
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    before = _jit.sources_stamp([tmp_path])
    (tmp_path / "b.py").write_text("y = 3\n")
    assert _jit.sources_stamp([tmp_path]) != before
    for dispatcher in (step.shard_rows_kernel, step.train_epoch, gemm.gemm_strided,
                       gemm.pack_b_rows_kernel, run.train_epochs, sparse.sparse_step_pass):
        locator = dispatcher._cache._impl._locator
        assert locator.get_source_stamp() == _jit._package_stamp()


def test_cold_start_check_compares_cpu_seconds_with_the_ceiling(tmp_path, monkeypatch, capsys):
    floors = tmp_path / "floors.json"
    floors.write_text(json.dumps({"cold_start": {"ceiling_cpu_s": 30.0}}))
    args = type("Args", (), {"floors": str(floors)})
    # the CPU seconds of successive cold runs: a slow first run is run again
    for runs, status, n_runs in (([29.9], 0, 1), ([30.1, 29.0], 0, 2), ([30.1, 31.0], 1, 2)):
        seconds = iter(runs)
        monkeypatch.setattr(startup, "run_cold", lambda: (next(seconds),) * 2 + ("",))
        assert startup.check(args) == status
        out = capsys.readouterr().out
        assert out.count("cold-start check (run") == n_runs
        assert ("ABOVE CEILING" in out) == (runs[0] > 30.0)


def test_cold_start_ceiling_measured_on_this_kind_of_cpu_comes_first():
    spec = {"ceiling_cpu_s": 90.0, "ceiling_cpu_s_znver4": 45.0}
    assert startup.ceiling_for(spec, cpu="znver4") == ("ceiling_cpu_s_znver4", 45.0)
    assert startup.ceiling_for(spec, cpu="znver3") == ("ceiling_cpu_s", 90.0)


def test_committed_floors_have_a_cold_start_ceiling():
    spec = json.loads((ROOT / "benchmarks" / "floors.json").read_text())["cold_start"]
    assert spec["ceiling_cpu_s"] > 0 and len(spec["measured_cpu_s"]) >= 3
    assert spec["ceiling_cpu_s"] >= max(spec["measured_cpu_s"])
    for key in spec:
        if key.startswith("ceiling_cpu_s_"):
            measured = spec["measured_cpu_s_" + key[len("ceiling_cpu_s_"):]]
            assert len(measured) >= 3 and spec[key] >= max(measured)


def test_breakdown_table_sums_self_times_per_function(tmp_path, capsys):
    saved = tmp_path / "run.json"
    entries = [{"name": "fastnn.kernels.a.f", "args": "", "seconds": 1.0, "self_seconds": 1.0},
               {"name": "fastnn.kernels.a.f", "args": "", "seconds": 2.0, "self_seconds": 2.0},
               {"name": "fastnn.kernels.b.g", "args": "", "seconds": 5.0, "self_seconds": 2.0},
               {"name": "numba.x.<locals>.impl", "args": "", "seconds": 0.5, "self_seconds": 0.5}]
    saved.write_text(json.dumps({"cpu": 9.0, "wall": 9.5, "entries": entries}))
    args = type("Args", (), {"load": str(saved), "json": None, "top": 2})
    assert startup.breakdown(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "5.5 s CPU in 4 compilations of 3 functions" in lines[0]
    assert [line.split()[:2] + line.split()[-1:] for line in lines[2:]] == [
        ["kernels.a.f", "3.00", "2"], ["kernels.b.g", "2.00", "1"], ["(1", "others)", "1"]]
