"""MLPClassifier / MLPRegressor: scikit-learn's estimator checks, agreement with
scikit-learn's own MLP, schedules, early stopping, callbacks, weights, saving,
pickling, and failure atomicity."""
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")   # a test-time dependency (the `test` extra)
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn  # noqa: E402
from fastnn import MLPClassifier, MLPRegressor, ModelFileError  # noqa: E402

# --------------------------------------------------------- estimator checks
_F32_REASON = ("float32 arithmetic: weighting a row by 2 and repeating it give the same "
               "model up to float32 rounding (max abs difference ~1e-7), but the check "
               "compares at rtol=1e-7; the float64 instances below pass this check")
_EXPECTED = {"check_sample_weight_equivalence_on_dense_data": _F32_REASON,
             # the same check on scipy.sparse X (the estimators take sparse input):
             # the same float32 sums over rows in another order (README)
             "check_sample_weight_equivalence_on_sparse_data": _F32_REASON}


def _expected_failed(est):
    return _EXPECTED if est.dtype == "float32" else {}


@parametrize_with_checks(
    [MLPClassifier(max_iter=100, random_state=0, n_threads=1),
     MLPRegressor(max_iter=100, random_state=0, n_threads=1),
     MLPClassifier(max_iter=100, random_state=0, dtype="float64"),
     MLPRegressor(max_iter=100, random_state=0, dtype="float64", solver="sgd")],
    expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------------- data
def _blobs(rng, n=400, d=5, k=3):
    # centers 6*sqrt(2) apart (k <= d): separable up to ~1e-5 Bayes error, so
    # accuracy thresholds cannot fail on an unlucky draw of random centers
    centers = 6.0 * np.eye(k, d)[rng.permutation(k)]
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, d)), y


# ------------------------------------------ agreement with scikit-learn's MLP
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_loss_curve_as_sklearn_in_float64(rng, solver):
    """Same init draws, shuffling, alpha and update rules: float64 training
    follows scikit-learn's loss curve to rounding (400 rows, batches of 200,
    so every batch is full and alpha maps exactly)."""
    X, y = _blobs(rng)
    kw = dict(hidden_layer_sizes=(17, 9), solver=solver, alpha=1e-3, max_iter=15,
              random_state=3, learning_rate_init=0.01, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(dtype="float64", **kw).fit(X, y)
        ref = SkMLPClassifier(**kw).fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def test_regressor_matches_sklearn_in_float64(rng):
    X = rng.normal(size=(200, 4))
    y = X @ rng.normal(size=4) + 0.1 * rng.normal(size=200)
    kw = dict(hidden_layer_sizes=(8,), activation="tanh", max_iter=10, random_state=1,
              tol=0.0, batch_size=50, solver="sgd", momentum=0.5, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(dtype="float64", **kw).fit(X, y)
        ref = SkMLPRegressor(**kw).fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-7, atol=1e-10)


# ------------------------------------------------------------- tasks
def test_string_labels_binary_and_multiclass(rng):
    X, y = _blobs(rng, k=2)
    labels = np.array(["no", "yes"])[y]
    clf = MLPClassifier(random_state=0, max_iter=300).fit(X, labels)
    assert clf.out_activation_ == "logistic" and clf.coefs_[-1].shape == (100, 1)
    assert set(clf.predict(X)) <= {"no", "yes"} and clf.score(X, labels) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-6)
    X3, y3 = _blobs(rng, k=4)
    clf3 = MLPClassifier(random_state=0, max_iter=300).fit(X3, y3 + 10)
    assert clf3.out_activation_ == "softmax" and list(clf3.classes_) == [10, 11, 12, 13]
    assert clf3.score(X3, y3 + 10) > 0.9


def test_multilabel(rng):
    X = rng.normal(size=(300, 6))
    Y = np.c_[X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] < 0.5].astype(int)
    clf = MLPClassifier(random_state=0, max_iter=400).fit(X, Y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    pred = clf.predict(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    assert clf.score(X, Y) > 0.8


def test_multioutput_regression(rng):
    X = rng.normal(size=(300, 4))
    Y = np.c_[X[:, 0] - X[:, 1], np.sin(X[:, 2])]
    reg = MLPRegressor(random_state=0, max_iter=500).fit(X, Y)
    assert reg.predict(X).shape == (300, 2) and reg.n_outputs_ == 2
    assert reg.score(X, Y) > 0.9
    single = MLPRegressor(random_state=0, max_iter=50).fit(X, Y[:, 0])
    assert single.predict(X).shape == (300,)


# -------------------------------------------------------------- weights
def test_class_weight_equals_the_sample_weight_it_implies(rng):
    X, y = _blobs(rng, k=3)
    y[:300] = 0   # imbalanced
    kw = dict(random_state=0, max_iter=20, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(class_weight="balanced", **kw).fit(X, y)
        counts = np.bincount(y)
        b = MLPClassifier(**kw).fit(X, y, sample_weight=len(y) / (3 * counts[y]))
        c = MLPClassifier(class_weight={0: 0.5, 2: 3.0}, **kw).fit(X, y)
        d = MLPClassifier(**kw).fit(X, y, sample_weight=np.array([0.5, 1.0, 3.0])[y])
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert np.array_equal(c.predict_proba(X), d.predict_proba(X))
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight={7: 1.0}).fit(X, y)


# -------------------------------------------- schedules, stopping, callbacks
def test_callbacks_see_each_epoch_and_can_stop(rng):
    X, y = _blobs(rng)
    seen = []

    def cb(logs):
        seen.append(logs["loss"])
        return logs["epoch"] == 3

    clf = MLPClassifier(max_iter=50, random_state=0, callbacks=[cb]).fit(X, y)
    assert clf.n_iter_ == 3 and seen == clf.loss_curve_


def test_invscaling_and_adaptive_schedules(rng):
    X, y = _blobs(rng, n=300)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5,
                      power_t=0.5, max_iter=4, tol=0.0, random_state=0,
                      callbacks=[lambda logs: lrs.append(logs["learning_rate"])]).fit(X, y)
    # epoch e trains with lr_init / (t + 1)^power_t, t = rows seen before it
    expected = [0.5] + [0.5 / (300 * e + 1) ** 0.5 for e in (1, 2, 3)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    lrs.clear()
    # tol huge: no epoch after the first counts as an improvement (the first
    # beats best_loss_=inf), so after epochs 4 and 7 (count > n_iter_no_change)
    # the adaptive schedule divides the rate by 5 instead of stopping.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1,
                            tol=1e6, n_iter_no_change=2, max_iter=9, random_state=0,
                            callbacks=[lambda logs: lrs.append(logs["learning_rate"])]
                            ).fit(X, y)
    assert clf.n_iter_ == 9
    np.testing.assert_allclose(lrs, [0.1] * 4 + [0.02] * 3 + [0.004] * 2, rtol=1e-12)


def test_early_stopping_restores_the_best_parameters(rng):
    X, y = _blobs(rng, n=500)
    y[rng.random(500) < 0.3] = 0    # label noise, so validation accuracy wanders
    snapshots = []

    def keep(logs):
        snapshots.append(logs["network"].params.copy())

    clf = MLPClassifier(early_stopping=True, n_iter_no_change=5, max_iter=200,
                        learning_rate_init=0.05, random_state=0, callbacks=[keep]).fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ == len(snapshots) and clf.best_loss_ is None
    best = int(np.argmax(scores))
    assert clf.best_validation_score_ == scores[best]
    assert np.array_equal(clf._network.params, snapshots[best])
    assert clf.n_iter_ == best + 1 + 6  # stopped after n_iter_no_change + 1 worse epochs


def test_early_stopping_split_is_stratified(rng):
    from fastnn.estimators import _stratified_split
    strata = np.repeat([0, 1, 2], [50, 30, 20])
    tr, va = _stratified_split(100, strata, 0.1, np.random.RandomState(0))
    assert len(va) == 10 and np.array_equal(np.bincount(strata[va]), [5, 3, 2])
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100


def test_verbose_shows_a_progress_bar(rng, capsys):
    pytest.importorskip("tqdm")
    X, y = _blobs(rng, n=100)
    MLPClassifier(max_iter=3, tol=0.0, verbose=True, random_state=0).fit(X, y)
    assert "epoch" in capsys.readouterr().err


# ---------------------------------------------------- sklearn integration
def test_pipeline_and_grid_search(rng):
    X, y = _blobs(rng, n=240)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=200, learning_rate_init=0.01,
                                                         random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(5,), (20,)],
                               "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert grid.best_score_ > 0.8 and len(grid.cv_results_["params"]) == 4


def test_partial_fit_needs_classes_then_continues(rng):
    X, y = _blobs(rng)
    clf = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    assert not hasattr(clf, "coefs_")
    for _ in range(30):
        clf.partial_fit(X[:200], y[:200], classes=[0, 1, 2])
        clf.partial_fit(X[200:], y[200:])
    assert len(clf.loss_curve_) == 60 and clf.n_iter_ == 1 and clf.t_ == 60 * 200
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("n_classes", [3, 300])
def test_one_hot_targets_for_few_and_many_classes(rng, n_classes):
    """Targets one-hot for a few classes (rows of a cached table) and for
    many (built per call: the table would hold n_classes^2 entries), the
    same either way; a label past the last class is refused by partial_fit
    with its name, in both the lookup and the 0..k-1 fast path."""
    from fastnn import estimators as E
    idx = rng.integers(0, n_classes, 41)
    _, T, _, _ = E._one_hot(idx, "multiclass", n_classes, np.float32)
    assert T.dtype == np.float32 and np.array_equal(T, np.eye(n_classes, dtype=np.float32)[idx])
    assert ((False, n_classes, "<f4") in E._CODE_ROWS) == (n_classes <= E._TABLE_CLASSES)
    with pytest.raises(IndexError):
        E._one_hot(np.array([0, n_classes]), "multiclass", n_classes, np.float32)
    X = rng.standard_normal((60, 4))
    y = rng.integers(0, n_classes, 60)
    clf = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    clf.partial_fit(X, y, classes=np.arange(n_classes))
    clf.partial_fit(X, y)
    bad = y.copy()
    bad[3] = n_classes
    with pytest.raises(ValueError, match=rf"\[{n_classes}\] that are not in classes_"):
        clf.partial_fit(X, bad)


def test_partial_fit_labels_and_loss_curve_on_a_fitted_model(rng):
    """The fitted model's partial_fit path looks each label up in classes_:
    string labels work, an unseen label is refused by name and changes
    nothing, and loss_curve_ grows by one epoch per call (the same list, as
    scikit-learn's) or is rebuilt when the user changed it."""
    X, y = _blobs(rng)
    names = np.array(["ant", "bee", "cat"], dtype=object)[y]
    clf = MLPClassifier(random_state=0)
    clf.partial_fit(X, names, classes=["ant", "bee", "cat"])
    curve = clf.loss_curve_
    clf.partial_fit(X[:50], names[:50])
    assert clf.loss_curve_ is curve and len(curve) == 2
    before, t_before = [w.copy() for w in clf.coefs_], clf.t_
    bad = names.copy()
    bad[7] = "dog"
    with pytest.raises(ValueError, match=r"\['dog'\] that are not in classes_"):
        clf.partial_fit(X, bad)
    assert all(np.array_equal(a, b) for a, b in zip(before, clf.coefs_))
    assert len(clf.loss_curve_) == 2 and clf.t_ == t_before
    assert set(clf.predict(X)) <= {"ant", "bee", "cat"}
    clf.loss_curve_ = [123.0]                         # changed by the user: rebuilt
    clf.partial_fit(X, names)
    assert len(clf.loss_curve_) == 3 and clf.loss_curve_[0] == curve[0]
    assert clf.loss_curve_ == [float(v) for v in clf._trainer.history.loss]


# --------------------------------------------------------------- threads
def test_threads_do_not_change_the_result_and_are_restored(rng):
    import numba
    X, y = _blobs(rng, n=700)
    before = numba.get_num_threads()
    one = MLPClassifier(max_iter=5, tol=0.0, random_state=0, n_threads=1)
    two = MLPClassifier(max_iter=5, tol=0.0, random_state=0,
                        n_threads=numba.config.NUMBA_NUM_THREADS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one.fit(X, y)
        two.fit(X, y)
    assert np.array_equal(one.predict_proba(X), two.predict_proba(X))
    assert numba.get_num_threads() == before
    seen = []
    numba.set_num_threads(1)
    try:    # n_threads=None uses the whole pool, then gives the caller back its setting
        MLPClassifier(max_iter=1, callbacks=[lambda logs: seen.append(
            numba.get_num_threads())]).fit(X, y)
        assert seen == [numba.config.NUMBA_NUM_THREADS]
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


def test_read_only_input_is_accepted(rng):
    X, y = _blobs(rng)
    X.setflags(write=False)
    clf = MLPClassifier(max_iter=5, random_state=0, shuffle=False).fit(X, y)
    assert clf.predict(X).shape == y.shape


# ------------------------------------------------------------ persistence
@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "eel"]), np.array([3, 7, 9]),
                                    np.array([-1.0, 0.0, 2.0])])
def test_save_and_load_restore_predictions_bit_for_bit(tmp_path, rng, labels):
    X, y = _blobs(rng)
    clf = MLPClassifier(hidden_layer_sizes=(13, 6), activation=["tanh", "relu"],
                        max_iter=30, random_state=0).fit(X, labels[y])
    path = tmp_path / "clf.npz"
    clf.save(path)
    back = MLPClassifier.load(path)
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    assert np.array_equal(back.predict(X), clf.predict(X))
    assert back.classes_.dtype == clf.classes_.dtype
    assert back.get_params() == {**clf.get_params(), "hidden_layer_sizes": (13, 6)}
    assert back.loss_curve_ == clf.loss_curve_ and back.n_iter_ == clf.n_iter_
    assert isinstance(fastnn.load_estimator(path), MLPClassifier)


def test_save_regressor_and_refuse_bad_files(tmp_path, rng):
    X = rng.normal(size=(100, 3))
    reg = MLPRegressor(max_iter=20, random_state=0, dtype="float64").fit(X, X.sum(1))
    path = tmp_path / "reg.npz"
    reg.save(path)
    assert np.array_equal(MLPRegressor.load(path).predict(X), reg.predict(X))
    with pytest.raises(ModelFileError, match="MLPRegressor, not a MLPClassifier"):
        MLPClassifier.load(path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        MLPRegressor.load(junk)
    bare = tmp_path / "bare.npz"
    fastnn.save(fastnn.Network([3, 4, 1], output="linear"), bare)
    with pytest.raises(ModelFileError, match="not an estimator"):
        fastnn.load_estimator(bare)
    with pytest.raises(ModelFileError):
        MLPRegressor.load(tmp_path / "missing.npz")


def test_labels_that_json_cannot_hold_are_refused(tmp_path, rng):
    X, y = _blobs(rng, k=2)
    clf = MLPClassifier(max_iter=5, random_state=0).fit(X, np.array([b"a", b"b"])[y])
    with pytest.raises(TypeError, match="pickle"):
        clf.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_unfitted_save_is_refused(tmp_path):
    with pytest.raises(sklearn.exceptions.NotFittedError):
        MLPClassifier().save(tmp_path / "x.npz")


def test_pickle_and_joblib_round_trip(tmp_path, rng):
    joblib = pytest.importorskip("joblib")
    X, y = _blobs(rng)
    clf = MLPClassifier(max_iter=30, random_state=0).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    # coefs_ are views of the network's parameters again after unpickling
    assert np.shares_memory(back.coefs_[0], back._network.params)
    joblib.dump(clf, tmp_path / "clf.joblib")
    again = joblib.load(tmp_path / "clf.joblib")
    assert np.array_equal(again.predict(X), clf.predict(X))
    again.partial_fit(X, y)     # the optimizer state came along too
    assert len(again.loss_curve_) == len(clf.loss_curve_) + 1


@pytest.mark.parametrize("copy_model", ["pickle", "deepcopy"])
def test_a_copied_model_continues_partial_fit_with_the_same_bits(rng, copy_model):
    # the epoch order draws on its generator's own memory (epoch_order.
    # RunningShuffle._raw_state): a copy must draw on the copy's generator
    import copy
    X, y = _blobs(rng, n=130)
    clf = MLPClassifier(hidden_layer_sizes=(9,), batch_size=20, random_state=3)
    clf.partial_fit(X, y, classes=np.unique(y))
    clf.partial_fit(X, y)
    back = pickle.loads(pickle.dumps(clf)) if copy_model == "pickle" else copy.deepcopy(clf)
    for _ in range(3):
        clf.partial_fit(X, y)
        back.partial_fit(X, y)
    assert clf._network.params.tobytes() == back._network.params.tobytes()
    for a, b in zip(clf._trainer.order.rng.get_state(), back._trainer.order.rng.get_state()):
        assert np.array_equal(a, b)
    assert back._trainer.order.rng is not clf._trainer.order.rng


# ------------------------------------------------------- failure atomicity
def _state(est):
    out = {}
    for k, v in vars(est).items():
        if isinstance(v, np.ndarray):
            out[k] = ("array", v.dtype.str, v.shape, v.tobytes())
        elif isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            out[k] = [a.tobytes() for a in v]
        elif k in ("_network",):
            out[k] = v.params.tobytes()
        elif k in ("_trainer", "_rng"):
            out[k] = pickle.dumps(v)
        else:
            out[k] = repr(v)
    return out


def test_a_failed_call_leaves_the_estimator_as_it_was(rng):
    X, y = _blobs(rng)
    clf = MLPClassifier(max_iter=10, random_state=0, warm_start=True).fit(X, y)
    before = _state(clf)
    bad_y = y.astype(float)
    bad_y[3] = np.nan

    def overflow():   # inputs near float32's limit: the first layer's sums overflow
        params = clf.get_params()
        try:
            huge = X / np.abs(X).max() * 3e38
            noisy = y[np.argsort(rng.random(len(y)))]   # shuffled labels: errors remain,
            # so gradients ~ 1e38 * lr overflow
            clf.set_params(solver="sgd", learning_rate_init=1e3).fit(huge, noisy)
        finally:
            clf.set_params(**params)

    def clone_with(**changes):
        params = clf.get_params()
        try:
            clf.set_params(**changes).fit(X, y)
        finally:
            clf.set_params(**params)

    attempts = [
        lambda: clf.fit(X, bad_y),
        lambda: clf.fit(X[:, :3], y),                        # wrong feature count
        lambda: clf.fit(X, y, sample_weight=np.ones(5)),
        lambda: clf.fit(X, y + 5),                           # other classes, warm start
        lambda: clf.partial_fit(X, np.full(len(y), 9)),      # unknown label
        overflow,                                            # non-finite weights
        lambda: clf.predict(X[:, :2]),
        lambda: clone_with(hidden_layer_sizes=(7,)),         # warm start, other layers
    ]
    for attempt in attempts:
        with pytest.raises((ValueError, TypeError)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attempt()
        assert _state(clf) == before
    for name, value in [("alpha", -1.0), ("solver", "newton"), ("activation", "swish"),
                        ("hidden_layer_sizes", (0,)), ("batch_size", 0),
                        ("learning_rate", "cosine"), ("n_threads", 0)]:
        params = clf.get_params()
        clf.set_params(**{name: value})
        with pytest.raises((ValueError, TypeError), match=name if name != "solver" else "adam"):
            clf.fit(X, y)
        clf.set_params(**params)
        assert _state(clf) == before


def test_parameters_changed_in_place_are_checked_again(rng):
    # a list or dict changed in place between two fits is checked again (a
    # cache of the checks keyed on the objects would miss it)
    X, y = _blobs(rng, n=60)
    sizes = [4]
    clf = MLPClassifier(hidden_layer_sizes=sizes, max_iter=2, class_weight={0: 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        sizes[0] = 0
        with pytest.raises(ValueError, match="hidden_layer_sizes"):
            clf.fit(X, y)
        sizes[0] = 3
        clf.fit(X, y)
        assert clf.coefs_[0].shape == (X.shape[1], 3)
        clf.class_weight[0] = -1.0
        with pytest.raises(ValueError, match="class_weight"):
            clf.fit(X, y)


def test_warm_fits_with_recycled_generators_have_the_bits_of_fresh_ones(rng, monkeypatch):
    """A warm-started fit resets one of the estimator's two generators to the
    seed's start instead of seeding a new RandomState; fits, a failed fit and
    the partial_fit calls after it must give the bits that new generators give."""
    import fastnn.estimators as est_module
    X, y = _blobs(rng, n=90)

    class Stop(Exception):
        pass

    def fail_in_training(logs):   # after an epoch: the generator was reset and used
        raise Stop

    def run():
        clf = MLPClassifier(hidden_layer_sizes=(7,), max_iter=2, batch_size=16,
                            random_state=3, warm_start=True)
        params = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for call in range(4):
                clf.fit(X, y)
                params.append(clf._network.params.copy())
                if call == 1:   # a fit that fails mid-training; partial_fit then continues
                    clf.set_params(callbacks=[fail_in_training])
                    with pytest.raises(Stop):
                        clf.fit(X, y)
                    clf.set_params(callbacks=None)
                clf.partial_fit(X[:40], y[:40])
                params.append(clf._network.params.copy())
        return params

    recycled = run()
    monkeypatch.setattr(est_module, "seeded_random_state",
                        lambda seed, recycle=None: np.random.RandomState(seed))
    fresh = run()
    for got, want in zip(recycled, fresh):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(recycled[0], recycled[1])   # the calls trained


# ------------------------------------------------------- optional pieces
def test_runs_without_scikit_learn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import numpy as np, fastnn\n"
        "X = np.random.default_rng(0).normal(size=(80, 3)); y = (X[:, 0] > 0).astype(int)\n"
        "c = fastnn.MLPClassifier(max_iter=200, random_state=0).fit(X, y)\n"
        "assert c.score(X, y) > 0.9, c.score(X, y)\n"
        "c.set_params(alpha=0.1); assert c.get_params()['alpha'] == 0.1\n"
        "r = fastnn.MLPRegressor(max_iter=50, random_state=0).fit(X, X[:, 0])\n"
        "assert r.score(X, X[:, 0]) > 0.5\n"
        "try:\n    fastnn.MLPClassifier().predict(X)\nexcept ValueError as e:\n"
        "    assert 'not fitted' in str(e)\n"
        "print('ok', type(c).__mro__[1].__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "fastnn._compat"]


def test_plot_history_of_an_estimator(tmp_path, rng):
    pytest.importorskip("matplotlib")
    X, y = _blobs(rng)
    clf = MLPClassifier(early_stopping=True, max_iter=30, random_state=0).fit(X, y)
    fastnn.plot_history(clf, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    with pytest.raises(TypeError, match="plot_history"):
        fastnn.plot_history(object())


# ------------------------------------------------------------ command line
def test_cli_estimator_options_save_and_load(tmp_path, capsys):
    from fastnn import cli
    model = tmp_path / "m.npz"
    assert cli.main(["train", "--epochs", "300", "--optimizer", "adam", "--lr", "0.01",
                     "--hidden", "32,16", "--activation", "tanh,relu", "--early-stopping",
                     "--validation-fraction", "0.2", "--n-iter-no-change", "20",
                     "--batch-size", "64", "--threads", "1", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "saved model" in out
    est = fastnn.load_estimator(model)
    assert isinstance(est, MLPClassifier) and est.hidden_layer_sizes == (32, 16)
    assert est.early_stopping and est.validation_scores_ and est.callbacks is None
    X, y = fastnn.spiral()
    assert est.score(X, y) > 0.8
    # continue training the saved model (architecture from the file)
    assert cli.main(["train", "--load", str(model), "--epochs", "5", "--optimizer", "sgd",
                     "--learning-rate", "invscaling", "--lr", "0.1", "--quiet"]) == 0
    assert "training accuracy" in capsys.readouterr().out


def test_cli_regression_and_mismatched_load(tmp_path, rng, capsys):
    from fastnn import cli
    X = rng.normal(size=(80, 2))
    path = tmp_path / "r.csv"
    np.savetxt(path, np.c_[X, X[:, 0] * 0.5 + 0.25], delimiter=",")
    model = tmp_path / "r.npz"
    assert cli.main(["train", "--data", str(path), "--hidden", "8", "--epochs", "50",
                     "--lr", "0.05", "--alpha", "0.0", "--save", str(model), "--quiet"]) == 0
    assert "training R^2" in capsys.readouterr().out
    assert isinstance(MLPRegressor.load(model), MLPRegressor)
    # a regressor cannot continue on classification data
    assert cli.main(["train", "--load", str(model), "--epochs", "1", "--quiet"]) == 2
    assert "MLPRegressor" in capsys.readouterr().err


def test_save_keeps_class_weight_dtype_and_a_large_n_threads(tmp_path, rng):
    """Every constructor value a user may pass survives the file format, and a
    model saved for more threads than this machine's pool still loads."""
    X = rng.standard_normal((60, 4))
    y = rng.integers(0, 3, 60)
    clf = MLPClassifier(hidden_layer_sizes=(7,), max_iter=5, random_state=0,
                        class_weight={0: 2.0, 1: 1.0, 2: 0.5}, dtype=np.float64,
                        n_threads=10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    path = tmp_path / "m.npz"
    clf.save(path)
    back = MLPClassifier.load(path)
    assert back.class_weight == {0: 2.0, 1: 1.0, 2: 0.5}
    assert np.dtype(back.dtype) == np.float64 and back.n_threads == 10**6
    assert back.predict_proba(X).tobytes() == clf.predict_proba(X).tobytes()


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fastnn.save(fastnn.Network([2, 2]), tmp_path / "n.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "n.npz").stat().st_mode & 0o777 == 0o644


def test_partial_fit_ignores_early_stopping_like_scikit_learn(rng):
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 2, 40)
    clf = MLPClassifier(hidden_layer_sizes=(5,), early_stopping=True, random_state=0)
    clf.partial_fit(X, y, classes=[0, 1])
    assert clf.n_iter_ == 1


def test_sigmoid_alias_initialises_like_logistic(rng):
    X = rng.standard_normal((30, 3))
    y = rng.integers(0, 2, 30)
    fits = [MLPClassifier(hidden_layer_sizes=(4, 5), activation=a, max_iter=1,
                          random_state=0) for a in ("logistic", "sigmoid",
                                                    ["logistic", "sigmoid"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coefs = [np.concatenate([c.ravel() for c in f.fit(X, y).coefs_]) for f in fits]
    assert coefs[0].tobytes() == coefs[1].tobytes() == coefs[2].tobytes()


def test_ctrl_c_keeps_completed_epochs_or_leaves_a_fresh_estimator_unfitted(rng, monkeypatch):
    X = rng.standard_normal((50, 3))
    y = rng.integers(0, 2, 50)
    real_run_epoch = fastnn.Trainer.run_epoch
    calls = []

    def interrupt_on(n):
        def run_epoch(self, *args):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real_run_epoch(self, *args)
        return run_epoch

    monkeypatch.setattr(fastnn.Trainer, "run_epoch", interrupt_on(3))
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    calls.clear()
    monkeypatch.setattr(fastnn.Trainer, "run_epoch", interrupt_on(1))
    fresh = MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(X, y)
    assert not hasattr(fresh, "coefs_")


# ------------------------------------------------------ one save / load
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_fastnn_save_and_load_take_estimators_and_networks(tmp_path, rng, cls):
    X = rng.standard_normal((33, 5))
    y = rng.integers(0, 3, 33) if cls is MLPClassifier else rng.standard_normal(33)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(hidden_layer_sizes=(7,), max_iter=3, random_state=0).fit(X, y)
    fastnn.save(est, tmp_path / "est.npz")
    back = fastnn.load(tmp_path / "est.npz")
    assert type(back) is cls
    assert np.array_equal(back.predict(X), est.predict(X))
    assert isinstance(cls.load(tmp_path / "est.npz"), cls)      # the alias
    est.save(tmp_path / "alias.npz")
    assert np.array_equal(fastnn.load(tmp_path / "alias.npz").predict(X), est.predict(X))
    net = fastnn.Network([5, 4, 2], seed=0)
    fastnn.save(net, tmp_path / "net.npz")
    assert isinstance(fastnn.load(tmp_path / "net.npz"), fastnn.Network)
    with pytest.raises(TypeError, match="Network or a fitted"):
        fastnn.save({"not": "a model"}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="Trainer"):
        fastnn.save(fastnn.Trainer(net), tmp_path / "x.npz")
    with pytest.raises(NotFittedError):
        fastnn.save(cls(), tmp_path / "x.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.npz", "est.npz", "net.npz"]


def test_partial_fit_trains_the_model_in_place_and_continues_after_load(tmp_path, rng):
    X, y = _blobs(rng, n=99)
    clf = MLPClassifier(hidden_layer_sizes=(9,), random_state=0)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    net, trainer = clf._network, clf._trainer
    for _ in range(3):
        clf.partial_fit(X, y)
    # no copy of the model per call: the same network and trainer, coefs_ views into it
    assert clf._network is net and clf._trainer is trainer
    assert np.shares_memory(clf.coefs_[0], net.params)
    assert len(clf.loss_curve_) == 4 and clf.t_ == 4 * 99
    clf.save(tmp_path / "m.npz")
    back = MLPClassifier.load(tmp_path / "m.npz")
    back.partial_fit(X, y)           # a fresh optimizer, the counters carry on
    assert len(back.loss_curve_) == 5 and back.t_ == 5 * 99


# ------------------------------------------------------ checkpoints
CHECKPOINT_SCRIPT = """
import os, sys, hashlib, warnings
import numpy as np
import fastnn
from fastnn import MLPClassifier
warnings.simplefilter("ignore")
path, die_at, every_k, solver = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(7)
X = rng.standard_normal((123, 6)); y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)

trained_here = []

def die(logs):
    if logs["epoch"] == die_at:
        os._exit(3)            # the process is killed: nothing after this runs

clf = MLPClassifier(hidden_layer_sizes=(9,), solver=solver, learning_rate="adaptive",
                    batch_size=20, max_iter=40, tol=1e-3, n_iter_no_change=4,
                    random_state=0, checkpoint=path if path != "-" else None,
                    checkpoint_every=every_k,
                    callbacks=[fastnn.every(1, trained_here.append)]
                    + ([fastnn.every(die_at, die)] if die_at else []))
clf.fit(X, y)
print(hashlib.sha256(clf._network.params.tobytes()).hexdigest(), clf.n_iter_,
      len(clf.loss_curve_), clf.t_)
print(len(trained_here))
"""


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_an_estimator_fit_killed_midway_resumes_from_its_checkpoint_with_the_same_bits(
        tmp_path, solver):
    path = str(tmp_path / "run.npz")

    def run(*args):
        return subprocess.run([sys.executable, "-c", CHECKPOINT_SCRIPT, *map(str, args), solver],
                              capture_output=True, text=True)

    straight = run("-", 0, 1)
    assert straight.returncode == 0, straight.stderr
    killed = run(path, 11, 3)          # dies after epoch 11; the checkpoint holds epoch 9
    assert killed.returncode == 3 and os.path.exists(path)
    assert len(fastnn.Trainer.resume(path).history) == 9
    resumed = run(path, 0, 3)
    assert resumed.returncode == 0, resumed.stderr
    result, trained = resumed.stdout.splitlines()
    assert result.split() == straight.stdout.splitlines()[0].split()
    n_iter = int(result.split()[1])
    assert int(trained) == n_iter - 9  # it went on from epoch 9, not from the start
    assert not os.path.exists(path)    # a completed fit removes its checkpoint


def test_a_checkpoint_of_another_run_is_refused(tmp_path, rng):
    X, y = _blobs(rng, n=90)
    path = tmp_path / "run.npz"
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=6, random_state=0,
                        checkpoint=str(path), checkpoint_every=2,
                        callbacks=[lambda logs: logs["epoch"] == 4])   # stops: file kept? no
    clf.fit(X, y)
    assert not path.exists()           # stopped by a callback: complete, removed
    trainer = fastnn.Trainer(fastnn.Network([X.shape[1], 5, 3], seed=0))
    trainer.fit(X, y, epochs=1, checkpoint=path)     # a checkpoint without this owner
    with pytest.raises(ValueError, match="holds another run"):
        MLPClassifier(hidden_layer_sizes=(5,), max_iter=6, random_state=0,
                      checkpoint=str(path)).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True, checkpoint=str(path)).fit(X, y)


@pytest.mark.parametrize("callbacks", [None, [lambda logs: False]])
def test_a_diverging_warm_start_fit_is_undone_whatever_the_loop(rng, callbacks):
    # compiled chunks (no callback) and epoch by epoch (a callback) alike
    X, y = _blobs(rng, n=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                            warm_start=True, callbacks=callbacks).fit(X, y)
    before = clf._network.params.tobytes(), clf._trainer.state1.tobytes(), clf.loss_curve_
    huge = X / np.abs(X).max() * 3e38
    clf.set_params(solver="sgd", learning_rate_init=1e3)
    with pytest.raises(ValueError, match="non-finite"):
        clf.fit(huge, y[rng.permutation(len(y))])
    assert (clf._network.params.tobytes(), clf._trainer.state1.tobytes(),
            clf.loss_curve_) == before


_PARTIAL_FIT_SOLVERS = [dict(solver="sgd", momentum=0.0), dict(solver="sgd", momentum=0.9),
                        dict(solver="sgd", momentum=0.9, nesterovs_momentum=True),
                        dict(solver="adam")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", _PARTIAL_FIT_SOLVERS)
def test_partial_fit_keeps_its_rollback_point_in_its_first_step(rng, dtype, solver):
    """A partial_fit call copies nothing in Python: its first step keeps the
    values it overwrites (kernels.step.keep_range).  The kept arrays are the
    model before the call, bit for bit, over every block of every layer
    (201 inputs: blocks of 96, 96 and 9 rows) and every bias."""
    X = rng.standard_normal((40, 201)).astype(dtype)
    y = rng.integers(0, 3, 40)
    clf = MLPClassifier(hidden_layer_sizes=(9, 5), batch_size=16, random_state=0,
                        learning_rate_init=0.01, dtype=np.dtype(dtype).name, **solver)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y)   # nonzero optimizer state
    trainer = clf._trainer
    before = (clf._network.params.copy(), trainer.state1.copy(), trainer.state2.copy())
    clf.partial_fit(X, y)
    entry = trainer._snapshots()[0]
    assert entry.kept[0] == 1, "the step did not keep the rollback point"
    assert not np.array_equal(clf._network.params, before[0])
    # the optimizer buffers the rule writes: none, the velocity, both moments
    written = 2 if solver["solver"] == "adam" else int(solver["momentum"] > 0)
    for row in range(1 + written):
        assert entry.arrays[row].tobytes() == before[row].tobytes()


# Adam's steps are bounded by its learning rate: its updates do not overflow
_PARTIAL_FIT_FAILURES = [(solver, failure) for solver in _PARTIAL_FIT_SOLVERS
                         for failure in ("overflow in the first step",
                                         "overflow in the third step", "a callback raises")
                         if solver["solver"] != "adam" or failure == "a callback raises"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver, failure", _PARTIAL_FIT_FAILURES)
def test_a_failed_partial_fit_leaves_the_model_exactly_as_it_was(rng, dtype, solver, failure):
    """Whether the call fails in its first step (its update overflowing after
    the step kept the rollback point), in a later one or after its epoch,
    the estimator is as before the call, bit for bit."""
    X = rng.standard_normal((64, 6)).astype(dtype)
    y = rng.integers(0, 3, 64)
    clf = MLPClassifier(hidden_layer_sizes=(7,), batch_size=16, random_state=0,
                        shuffle=False, learning_rate_init=0.01, dtype=np.dtype(dtype).name,
                        **solver)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y)
    before = _state(clf)
    if failure == "a callback raises":
        def fail(logs):
            raise RuntimeError("a callback failed")
        clf.set_params(callbacks=[fail])
        with pytest.raises(RuntimeError, match="callback failed"):
            clf.partial_fit(X, y)
        clf.set_params(callbacks=None)
    else:   # huge inputs: gradients ~ 1e37, so lr * gradient overflows the weights
        huge = X.copy()
        start = 0 if failure.endswith("first step") else 32   # from batch 1 or batch 3 on
        huge[start:] = X[start:] / np.abs(X[start:]).max() * (np.finfo(dtype).max / 10)
        with pytest.raises(ValueError, match="non-finite"):
            clf.partial_fit(huge, y[::-1].copy())
    assert _state(clf) == before
    clf.partial_fit(X, y)   # and it goes on from there
    assert np.isfinite(clf._network.params).all()


def test_hyperparameters_changed_between_calls_are_checked_again(rng):
    """_checked_params checks once per set of values: a value changed since
    (assigned, set_params, a list changed in place, 200 -> 200.0) is checked
    again, and a failed call leaves the estimator as it was."""
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 2, 40)
    est = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    est.partial_fit(X, y, classes=[0, 1])
    est.partial_fit(X, y)
    est.set_params(learning_rate_init=0.0)
    with pytest.raises(ValueError, match="learning_rate_init"):
        est.partial_fit(X, y)
    est.learning_rate_init = 0.001
    est.partial_fit(X, y)
    est.callbacks = [lambda logs: False]
    est.partial_fit(X, y)
    est.callbacks.append("not a function")
    with pytest.raises(ValueError, match="callbacks"):
        est.partial_fit(X, y)
    est.callbacks = None
    est.batch_size = 20.0
    with pytest.raises(TypeError, match="batch_size"):
        est.partial_fit(X, y)
    est.batch_size = 20
    before = est.coefs_[0].copy()
    est.partial_fit(X, y)
    assert not np.array_equal(before, est.coefs_[0])
