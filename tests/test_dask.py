"""Data-parallel training and prediction on a real Dask cluster (LocalCluster
of worker processes on localhost; fastnn.distributed).  No mocks: the fits
below run their gradients in the worker processes."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from fastnn import MLPClassifier, MLPRegressor  # noqa: E402
from fastnn import distributed as fd  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning",
                                        "ignore:Port .* is already in use",
                                        "ignore:Dask currently has limited support",
                                        "ignore:.*unclosed.*:ResourceWarning")

KW = dict(hidden_layer_sizes=(16,), max_iter=4, random_state=0, batch_size=64)


def _cluster(n_workers, processes=True):
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                    processes=processes, dashboard_address=None)


@pytest.fixture(scope="module")
def client():
    cluster = _cluster(2)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _data(n=600, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
    return X, y


def _worker_calls(client):
    """Gradient calls made so far in each worker process."""
    return client.run(lambda: __import__("fastnn.distributed").distributed._ShardActor.calls)


def test_fit_runs_on_the_workers_and_predictions_are_lazy(client):
    X, y = _data(1200)
    dX, dy = da.from_array(X, chunks=300), da.from_array(y, chunks=300)
    before, here = sum(_worker_calls(client).values()), fd._ShardActor.calls
    est = MLPClassifier(**dict(KW, max_iter=15)).fit(dX, dy)
    calls = sum(_worker_calls(client).values()) - before
    steps = est.cluster_stats_["steps"]
    assert steps == 15 * 19                         # ceil(1200 / 64) steps per epoch
    assert calls >= steps                           # every step ran on the workers ...
    assert calls == 4 * steps                       # ... one gradient per chunk (64 > 4 x 3)
    assert fd._ShardActor.calls == here             # and none in this process
    local = MLPClassifier(**dict(KW, max_iter=15)).fit(X, y)
    assert abs(est.score(X, y) - local.score(X, y)) < 0.03
    proba = est.predict_proba(dX)
    assert isinstance(proba, da.Array) and proba.chunks == ((300,) * 4, (3,))
    np.testing.assert_array_equal(proba.compute(), est.predict_proba(X))
    labels = est.predict(dX)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), est.predict(X))
    assert est.score(dX, dy) == pytest.approx(est.score(X, y), abs=1e-12)
    # only parameters, optimizer state and gradients moved: the state (3 x
    # the parameters) to each worker holding shards at an epoch's start (both
    # workers, unless the scheduler placed every chunk on one of them: seen
    # in CI) and back from one at its end, two driver round trips an epoch;
    # during the steps each shard's gradient to every other worker
    stats = est.cluster_stats_
    n_bytes = est._network.params.size * 4
    actors = stats["actors"]
    assert 1 <= actors <= len(client.nthreads())
    assert stats["epochs"] == 15 and stats["round_trips"] == 2 * 15
    assert stats["bytes_out"] == 15 * 3 * n_bytes * actors
    assert stats["bytes_in"] == 15 * 3 * n_bytes
    assert stats["peer_bytes"] == 4 * steps * n_bytes * (actors - 1)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_one_chunk_gives_the_local_fit_bit_for_bit(client, solver):
    X, y = _data()
    kw = dict(KW, solver=solver, learning_rate_init=0.05 if solver == "sgd" else 1e-3)
    local = MLPClassifier(**kw).fit(X, y)
    dist = MLPClassifier(**kw).fit(da.from_array(X, chunks=-1), da.from_array(y, chunks=-1))
    np.testing.assert_array_equal(dist._network.params, local._network.params)
    assert dist.loss_curve_ == local.loss_curve_
    assert dist.n_iter_ == local.n_iter_ and dist.t_ == local.t_
    # partial_fit continues both the same way (numpy y as the target of a Dask X)
    local.partial_fit(X, y)
    dist.partial_fit(da.from_array(X, chunks=-1), y)
    np.testing.assert_array_equal(dist._network.params, local._network.params)


def test_regressor_one_chunk_and_weighted_many_chunks(client):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 4))
    Y = np.c_[X[:, 0] - X[:, 1], X[:, 2] * 0.5]
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=1, batch_size=50,
              solver="sgd", learning_rate_init=0.01)
    local = MLPRegressor(**kw).fit(X, Y)
    dist = MLPRegressor(**kw).fit(da.from_array(X, chunks=-1), da.from_array(Y, chunks=-1))
    np.testing.assert_array_equal(dist._network.params, local._network.params)
    pred = dist.predict(da.from_array(X, chunks=100))
    assert isinstance(pred, da.Array) and pred.shape == (500, 2)
    np.testing.assert_array_equal(pred.compute(), local.predict(X))
    assert dist.score(da.from_array(X, chunks=100), Y) == pytest.approx(local.score(X, Y),
                                                                         abs=1e-12)
    w = rng.uniform(0.5, 2.0, 500)
    lw = MLPRegressor(**kw).fit(X, Y, sample_weight=w)
    dw = MLPRegressor(**kw).fit(da.from_array(X, chunks=125), Y,
                                sample_weight=da.from_array(w, chunks=125))
    np.testing.assert_allclose(dw._network.params, lw._network.params, rtol=0, atol=1e-6)


def test_multilabel_and_class_weight(client):
    X, y = _data()
    Y = np.c_[y == 1, X[:, 3] > 0].astype(np.int64)          # two labels per row
    local = MLPClassifier(**KW).fit(X, Y)
    dist = MLPClassifier(**KW).fit(da.from_array(X, chunks=-1), da.from_array(Y, chunks=-1))
    np.testing.assert_array_equal(dist._network.params, local._network.params)
    np.testing.assert_array_equal(dist.predict(da.from_array(X, chunks=200)).compute(),
                                  local.predict(X))
    kw = dict(KW, class_weight="balanced")
    local = MLPClassifier(**kw).fit(X, y)
    dist = MLPClassifier(**kw).fit(da.from_array(X, chunks=200), da.from_array(y, chunks=200))
    # the same weights per row; the sums over chunks round differently
    np.testing.assert_allclose(dist._network.params, local._network.params, rtol=0, atol=1e-5)


def test_same_bits_with_1_2_and_3_workers(client):
    # 2: the fixture's worker processes; 1 and 3: workers as threads of this
    # process (quicker to start; and the bits do not depend on that either)
    X, y = _data(700)
    chunks = ((250, 150, 300), (5,))        # uneven chunks; the chunking is part of the input
    fits = {}
    for n_workers in (1, 2, 3):
        if n_workers == 2:
            c, cluster = client, None
        else:
            cluster = _cluster(n_workers, processes=False)
            c = distributed.Client(cluster, set_as_default=False)
        try:
            with fd.use_client(c):
                est = MLPClassifier(**KW).fit(da.from_array(X, chunks=chunks),
                                              da.from_array(y, chunks=chunks[0]))
            fits[n_workers] = (est._network.params.copy(), est.loss_curve_)
        finally:
            if cluster is not None:
                c.close()
                cluster.close()
    for n_workers in (1, 3):
        np.testing.assert_array_equal(fits[n_workers][0], fits[2][0])
        assert fits[n_workers][1] == fits[2][1]


def test_bad_chunk_raises_the_local_error_and_leaves_the_model(client):
    X, y = _data()
    est = MLPClassifier(**KW).fit(da.from_array(X, chunks=200), da.from_array(y, chunks=200))
    params, curve = est._network.params.copy(), list(est.loss_curve_)
    bad = X.copy()
    bad[450, 2] = np.nan                     # in the third chunk, seen only by its worker
    with pytest.raises(ValueError) as local_err:
        MLPClassifier(**KW).fit(bad, y)
    with pytest.raises(ValueError) as dist_err:
        est.partial_fit(da.from_array(bad, chunks=200), da.from_array(y, chunks=200))
    assert str(dist_err.value) == str(local_err.value)
    np.testing.assert_array_equal(est._network.params, params)
    assert est.loss_curve_ == curve
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        MLPClassifier(**KW).fit(da.from_array(X, chunks=200), da.from_array(y[:-1], chunks=200))
    with pytest.raises(ValueError, match="lbfgs"):
        MLPClassifier(solver="lbfgs").fit(da.from_array(X, chunks=200), y)


def test_diverging_fit_raises_the_local_error_and_leaves_the_model(client):
    """A step whose loss is not finite stops every worker before its update
    (they all see every shard's loss); the fit raises the local error and a
    partial_fit leaves the model as it was."""
    X, y = _data()
    X = X * 1e4
    kw = dict(KW, solver="sgd", learning_rate_init=1e6, momentum=0.0)
    with pytest.raises(ValueError) as local_err:
        MLPClassifier(**kw).fit(X, y)
    dX, dy = da.from_array(X, chunks=200), da.from_array(y, chunks=200)
    with pytest.raises(ValueError) as dist_err:
        MLPClassifier(**kw).fit(dX, dy)
    assert str(dist_err.value) == str(local_err.value)
    fresh = MLPClassifier(**kw)
    with pytest.raises(ValueError, match="non-finite"):
        fresh.partial_fit(dX, dy, classes=[0, 1, 2])
    assert not hasattr(fresh, "coefs_")
    est = MLPClassifier(**dict(kw, learning_rate_init=1e-9)).fit(dX, dy)
    params, curve = est._network.params.copy(), list(est.loss_curve_)
    est.set_params(learning_rate_init=1e6, warm_start=True)   # a new optimizer, this lr
    with pytest.raises(ValueError, match="non-finite"):
        est.fit(dX, dy)
    np.testing.assert_array_equal(est._network.params, params)
    assert est.loss_curve_ == curve


def test_y_chunked_differently_is_rechunked_to_x(client):
    X, y = _data()
    a = MLPClassifier(**KW).fit(da.from_array(X, chunks=200), da.from_array(y, chunks=200))
    b = MLPClassifier(**KW).fit(da.from_array(X, chunks=200), da.from_array(y, chunks=77))
    np.testing.assert_array_equal(a._network.params, b._network.params)
    # an empty chunk holds no shard and changes nothing
    c = MLPClassifier(**KW).fit(da.from_array(X, chunks=((200, 0, 200, 200), (5,))), y)
    np.testing.assert_array_equal(a._network.params, c._network.params)


def test_dataframes_and_string_labels(client):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    dX = dd.from_pandas(frame, npartitions=3)
    dy = dd.from_pandas(pd.Series(labels, dtype=object), npartitions=3)
    est = MLPClassifier(**KW).fit(dX, dy)
    assert list(est.classes_) == ["a", "b", "c"]
    assert list(est.feature_names_in_) == list(frame.columns)
    pred = est.predict(dX)
    assert isinstance(pred, da.Array)
    assert (pred.compute() == est.predict(frame)).all()


def test_ctrl_c_keeps_the_last_complete_epoch(client):
    X, y = _data()
    dX, dy = da.from_array(X, chunks=200), da.from_array(y, chunks=200)

    def press_ctrl_c(logs):
        if logs["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)      # handled by the Trainer's loop

    with pytest.warns(UserWarning, match="interrupted"):
        stopped = MLPClassifier(**dict(KW, max_iter=10), callbacks=[press_ctrl_c]).fit(dX, dy)
    two = MLPClassifier(**dict(KW, max_iter=2)).fit(dX, dy)
    assert stopped.n_iter_ == 2
    np.testing.assert_array_equal(stopped._network.params, two._network.params)


def test_gridsearch_on_the_dask_joblib_backend(client):
    joblib = pytest.importorskip("joblib")
    from sklearn.model_selection import GridSearchCV
    X, y = _data(300)
    grid = {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(8,), (16,)]}
    est = MLPClassifier(max_iter=20, random_state=0)
    serial = GridSearchCV(est, grid, cv=2).fit(X, y)

    def start_compile_log():         # closures: shipped by value to the workers
        from numba.core import event
        from fastnn import _compile_log
        _compile_log.test_log = _compile_log.CompileLog()
        event.install_listener("numba:compile", _compile_log.test_log)

    def compiled():
        from fastnn import _compile_log
        return len(_compile_log.test_log.entries)

    client.run(start_compile_log)
    with distributed.get_task_stream(client) as stream:
        with joblib.parallel_backend("dask"):
            parallel = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
    workers = set(client.nthreads())
    ran_on = {t["worker"] for t in stream.data}
    assert stream.data and ran_on <= workers
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    assert parallel.best_params_ == serial.best_params_
    # a worker compiles a signature at most once (or loads it from numba's
    # cache): a second search compiles nothing anywhere
    first = client.run(compiled)
    with joblib.parallel_backend("dask"):
        GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
    assert client.run(compiled) == first


def test_import_fastnn_never_imports_dask_and_missing_extra_is_named():
    code = ("import sys, fastnn, numpy as np; from fastnn import MLPClassifier;"
            "MLPClassifier(max_iter=1).fit(np.zeros((4, 2)), [0, 1, 0, 1]);"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')];"
            "import dask.array as da; sys.modules['distributed'] = None\n"
            "try:\n"
            "    MLPClassifier().fit(da.zeros((4, 2)), [0, 1, 0, 1])\n"
            "except ImportError as e:\n"
            "    assert 'fastnn[dask]' in str(e), e; print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _kill_a_shard_holder(client, killed):
    """SIGKILL the process of a worker that holds shards of the running fit."""
    holders = sorted(w for w, keys in client.has_what().items()
                     if any("_make_shard" in str(k) for k in keys))
    pids = client.run(os.getpid, workers=holders[:1])
    for addr, pid in pids.items():
        os.kill(pid, signal.SIGKILL)
        killed.append(addr)


def test_worker_killed_mid_fit_gives_the_same_bits(client):
    # last in this file: it kills the fixture's workers (their nannies restart them)
    X, y = _data()
    dX, dy = da.from_array(X, chunks=150), da.from_array(y, chunks=150)
    kw = dict(KW, max_iter=6, batch_size=2)
    reference = MLPClassifier(**kw).fit(dX, dy)
    killed = []

    def die_during_the_next_epoch(more_calls):
        # runs in a worker: its process kills itself at its more_calls-th
        # shard gradient from now, inside the next epoch's steps whatever
        # their speed (a driver thread polling the workers' counts to kill
        # one came too late once the steps got faster: epoch 4 had ended)
        import fastnn.distributed as fd_here
        actor = fd_here._ShardActor
        target = actor.calls + more_calls
        compute = actor._shard_gradients

        def dying(self, step, scales):
            if type(self).calls + 1 >= target:
                os.kill(os.getpid(), signal.SIGKILL)
            return compute(self, step, scales)
        actor._shard_gradients = dying

    def kill(logs):
        if logs["epoch"] == 1:       # between two epochs
            _kill_a_shard_holder(client, killed)
        if logs["epoch"] == 3:       # and during epoch 4's steps
            client.wait_for_workers(2, timeout=60)
            holders = sorted(w for w, keys in client.has_what().items()
                             if any("_make_shard" in str(k) for k in keys))
            client.run(die_during_the_next_epoch, 4, workers=holders[:1])
            killed.append(holders[0])

    est = MLPClassifier(**kw, callbacks=[kill]).fit(dX, dy)
    assert len(killed) == 2 and est.cluster_stats_["recoveries"] >= 2
    # the second kill came while epoch 4 ran: its steps were not all done
    assert est.cluster_stats_["epochs_redone"] >= 1
    np.testing.assert_array_equal(est._network.params, reference._network.params)
    assert est.loss_curve_ == reference.loss_curve_
    client.wait_for_workers(2, timeout=60)
