"""Correctness of the benchmark machinery (fastnn.bench); no timing asserts."""
import json
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fastnn
from fastnn.bench.cases import CASES, Case, make_data
from fastnn.bench.numpy_mlp import NumpyMLP


@pytest.mark.parametrize("sizes", [(2, 7, 3), (33, 16, 8, 5), (7, 1, 2)])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_numpy_reference_gradient_matches_fastnn(sizes, m):
    X, y = make_data(Case("t", sizes, m, m), seed=m)
    net = fastnn.Network(list(sizes), activation="relu", seed=1)
    loss_fn, grad = fastnn.Trainer(net, l2=0.0).loss_and_gradient(X, y)
    ref = NumpyMLP(net.weights, net.biases)
    loss_np = ref.loss_and_gradient(X, y)
    g = net.copy()
    g.params[:] = grad
    assert loss_np == pytest.approx(loss_fn, rel=1e-4, abs=1e-6)
    for a, b in zip(ref.gW + ref.gb, g.weights + g.biases):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_numpy_reference_step_matches_fastnn_training():
    # Two momentum steps on one full batch: same update rule, same parameters.
    X, y = make_data(Case("t", (5, 9, 3), 17, 17), seed=3)
    net = fastnn.Network([5, 9, 3], activation="relu", seed=2)
    ref = NumpyMLP(net.weights, net.biases, lr=0.1, momentum=0.9)
    fastnn.Trainer(net, fastnn.SGD(lr=0.1, momentum=0.9), batch_size=17,
                   shuffle=False).fit(X, y, epochs=2)
    ref.step(X, y)
    ref.step(X, y)
    for a, b in zip(ref.W + ref.b, net.weights + net.biases):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cases_match_the_issue():
    assert {c: (CASES[c].sizes, CASES[c].batch) for c in CASES} == {
        "spiral": ((2, 100, 3), 300), "mnist": ((784, 256, 10), 128),
        "mnist_deep": ((784, 512, 256, 10), 128), "wide": ((784, 1024, 1024, 10), 512),
        "tiny_batch": ((784, 128, 10), 16)}
    assert CASES["spiral"].n_samples == 300
    assert CASES["mnist"].step_flops(1) == 6 * (784 * 256 + 256 * 10)


def test_cli_prints_a_table(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench", "--cases", "spiral", "--peers", "fastnn,numpy",
         "--repeat", "1", "--samples", "60", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["case", "fastnn", "s/s"]
    assert lines[2].split()[0] == "spiral"
    assert "sgemm" in lines[-1]
    res = json.loads(out.read_text())
    assert set(res["cases"]["spiral"]) == {"fastnn", "numpy"}
    assert res["cases"]["spiral"]["numpy"]["samples_per_s"] > 0


def test_cli_rejects_unknown_case():
    proc = subprocess.run([sys.executable, "-m", "fastnn.bench", "--cases", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown case" in proc.stderr


@pytest.mark.parametrize("floor, status", [(0.0, 0), (1e9, 1)])
def test_floor_check_passes_and_fails(tmp_path, floor, status):
    f = tmp_path / "floors.json"
    # both sets, so the test runs on AVX-512 and AVX2 machines alike
    f.write_text(json.dumps({"threads": 1, "floors": {"spiral": floor},
                             "floors_avx2": {"spiral": floor}}))
    proc = subprocess.run([sys.executable, "-m", "fastnn.bench.floors", "check", "--floors",
                           str(f), "--repeat", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert ("BELOW FLOOR" in proc.stdout) == (status == 1)


def test_every_kernel_the_asv_suite_names_exists():
    """benchmarks/_kernels.py turns a missing name into a skipped benchmark (so
    older commits can be compared); at HEAD every name must resolve, or a
    renamed kernel would silently drop out of the gate."""
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernel_names", path)
    names = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names)
    missing = [n for n, v in vars(names).items()
               if not n.startswith("_") and v is None]
    assert not missing, f"benchmarks/_kernels.py names missing kernels: {missing}"
    assert names.ACT_CODES == {"relu": 1, "sigmoid": 2, "tanh": 3}


def test_prediction_table_runs_and_peers_agree(tmp_path):
    """python -m fastnn.bench.predict: every library predicts the same
    probabilities from the same weights (the command refuses to print a table
    otherwise), and the table has a row per library."""
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench.predict", "--peers", "fastnn,fastnn_estimator,numpy",
         "--rows", "500", "--repeat", "1", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:5]]
    assert rows == ["fastnn", "fastnn_estimator", "numpy"]
    res = json.loads(out.read_text())["results"]
    assert all(r["rows_per_s"] > 0 and r["one_row_s"] > 0 for r in res.values())


def test_estimator_peer_trains_the_case(tmp_path):
    """The fastnn_estimator peer (MLPClassifier.fit, one epoch per call) runs."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastnn.bench", "--cases", "spiral", "--peers",
         "fastnn,fastnn_estimator", "--repeat", "1", "--samples", "60", "--threads", "1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    head, _, row = proc.stdout.splitlines()[:3]
    assert "fastnn_estimator" in head and "est" in head and row.split()[0] == "spiral"


def test_floor_set_follows_the_cpus_vector_width():
    from fastnn.bench.floors import floor_set
    from fastnn.kernels.microkernel import VECTOR_BITS
    key, floors = floor_set({"floors": {"a": 1.0}, "floors_avx2": {"a": 2.0}})
    assert (key, floors) == (("floors", {"a": 1.0}) if VECTOR_BITS >= 512
                             else ("floors_avx2", {"a": 2.0}))
    # a set measured on this kind of CPU comes first
    spec = {"floors": {"a": 1.0}, "floors_avx2": {"a": 2.0}, "floors_znver4": {"a": 3.0}}
    assert floor_set(spec, cpu="znver4") == ("floors_znver4", {"a": 3.0})
    assert floor_set(spec, cpu="znver5")[0] == key


def test_the_perf_map_names_the_compiled_kernels(tmp_path):
    """fastnn.bench.perfmap.write_map: one line per compiled function, in
    address order, not overlapping, naming the step's and the GEMM's kernels
    at their entry points."""
    import warnings
    from fastnn import MLPClassifier
    from fastnn.bench.perfmap import write_map
    from fastnn.kernels import step
    X, y = make_data(CASES["spiral"], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MLPClassifier(hidden_layer_sizes=(7,), max_iter=2, random_state=0).fit(X, y)
    path = write_map(str(tmp_path / "perf.map"))
    entries = []
    for line in open(path).read().splitlines():
        start, size, name = line.split(" ", 2)
        entries.append((int(start, 16), int(size, 16), name))
    starts = [e[0] for e in entries]
    assert starts == sorted(set(starts))
    assert all(size > 0 for _, size, _ in entries)
    assert all(a[0] + a[1] <= b[0] for a, b in zip(entries, entries[1:]))
    named = {}
    for start, _, name in entries:
        named.setdefault(name, set()).add(start)
    for name in ("step.shard_rows_kernel", "step.weights_block_kernel", "gemm.gemm_strided"):
        assert name in named, name
    # every compiled signature (float32 here, float64 too if another test
    # compiled it in this process) at its entry point
    entry_points = {result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
                    for result in step.shard_rows_kernel.overloads.values()}
    assert entry_points == named["step.shard_rows_kernel"]


def test_the_profile_says_when_perf_is_missing(monkeypatch, capsys):
    from fastnn.bench import perfmap
    monkeypatch.setattr(perfmap.shutil, "which", lambda name: None)
    assert perfmap.profile("spiral", 0.1, 5) == 2
    assert "'perf' command was not found" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,k,n", [(16, 128, 10), (7, 33, 1), (33, 2, 100), (100, 129, 3)])
def test_the_products_benchmark_times_the_right_products(dtype, m, k, n):
    """What `python -m fastnn.bench.products` times, one repetition each,
    against float64 NumPy: the step's forward (a W + b), its weight gradient
    (a^T d into work.grad, with db = column sums of d), the backward d W^T
    from W^T kept and with W^T packed first."""
    from fastnn.bench import products
    from fastnn.kernels.step import bundle_types
    rng = np.random.default_rng(m * k + n)
    net, batch, work, update, a, W, d = products.step_operands(m, k, n, np.dtype(dtype), rng)
    # the bundles have the training step's types, so the step runs by its
    # shared symbol as in training (a cached caller of the step compiled for
    # other types called a null address: found writing this benchmark)
    assert tuple(numba.typeof(x) for x in (net, batch, work, update)) == bundle_types(dtype)
    b = net.params[k * n:k * n + n]
    a64, W64, d64 = (x.astype(np.float64) for x in (a, W, d))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    products.weight_grad_reps(net, batch, work, update, np.int64(1))
    np.testing.assert_allclose(work.grad[:k * n].reshape(k, n), a64.T @ d64, **tol)
    np.testing.assert_allclose(work.grad[k * n:k * n + n], d64.sum(axis=0), **tol)
    products.forward_reps(net, work, np.int64(m), np.int64(1))
    z = work.act_ws[work.act_off[0]:work.act_off[0] + m * n].reshape(m, n)
    np.testing.assert_allclose(z, a64 @ W64 + b, **tol)
    out = np.empty((m, k), dtype)
    pack = np.empty(products.pack_workspace_elements((n, k), np.dtype(dtype).itemsize), dtype)
    products.backward_reps(d, np.ascontiguousarray(W.T), out, pack, np.int64(1))
    np.testing.assert_allclose(out, d64 @ W64.T, **tol)
    out[:] = np.nan
    products.backward_transposing_reps(d, W, np.empty((n, k), dtype), out, pack, np.int64(1))
    np.testing.assert_allclose(out, d64 @ W64.T, **tol)
