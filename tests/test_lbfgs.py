"""solver='lbfgs': scipy's L-BFGS-B on the compiled full-batch objective
(fastnn/lbfgs.py), against scikit-learn 1.9's MLP lbfgs path."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")   # a test-time dependency (the `test` extra)
pytest.importorskip("scipy")
from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn.lbfgs  # noqa: E402
from fastnn import MLPClassifier, MLPRegressor  # noqa: E402
from fastnn.network import Network  # noqa: E402
from fastnn.trainer import FullBatchObjective, make_targets  # noqa: E402

from .conftest import central_difference  # noqa: E402

PARITY_SETS = {"digits": datasets.load_digits, "iris": datasets.load_iris,
               "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer}
STOCHASTIC_ONLY = ("loss_curve_", "best_loss_", "validation_scores_",
                   "best_validation_score_")


def _split(rng, X, y, test=0.25):
    """A random stratified-enough split (a random permutation), standardised on
    the training part."""
    perm = rng.permutation(len(y))
    n_test = int(test * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    mu, sd = X[tr].mean(0), X[tr].std(0)
    sd[sd == 0] = 1.0
    return (X[tr] - mu) / sd, (X[te] - mu) / sd, y[tr], y[te]


def _fit_quiet(est, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kw)


def _classes(rng, n, d=7, k=3):
    """Overlapping classes (so the minimum of the loss is not near zero)."""
    X = rng.normal(size=(n, d))
    score = X[:, :k] + 0.8 * rng.normal(size=(n, k))
    return X, score.argmax(1)


# ------------------------------------------------ agreement with scikit-learn
@pytest.mark.parametrize("name", sorted(PARITY_SETS))
@pytest.mark.parametrize("weighted", [False, True])
def test_same_loss_and_accuracy_as_sklearn_in_float64(rng, name, weighted):
    """Same init draws, objective and L-BFGS-B options: the same iterates to
    rounding.  max_iter=15 bounds how far rounding differences (summation
    order) can grow along the path: measured over 60 random draws each of iris
    and wine, 15 iterations agree to 1.4e-12 at worst, but longer runs on
    nearly separable data can flip one of the line search's decisions (seen on
    iris: 3e-14 at iteration 28, 1e-2 at iteration 31), after which both runs
    are valid but different."""
    X, y = PARITY_SETS[name](return_X_y=True)
    Xtr, Xte, ytr, yte = _split(rng, X, y)
    sw = rng.uniform(0.3, 3.0, len(ytr)) if weighted else None
    kw = dict(hidden_layer_sizes=(int(rng.choice([33, 129])),), solver="lbfgs",
              alpha=float(10 ** rng.uniform(-5, -1)), max_iter=15,
              random_state=int(rng.integers(2**31)))
    ours = _fit_quiet(MLPClassifier(dtype="float64", **kw), Xtr, ytr, sample_weight=sw)
    ref = _fit_quiet(SkMLPClassifier(**kw), Xtr, ytr, sample_weight=sw)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
    assert ours.score(Xte, yte) == ref.score(Xte, yte)
    np.testing.assert_array_equal(ours.predict(Xte), ref.predict(Xte))


def test_parity_table_configuration_converges_like_sklearn():
    """The configuration of ``python -m fastnn.parity``'s lbfgs rows (fixed
    seeds, run to convergence): the same iterations, loss to 1e-6, accuracy."""
    from fastnn.parity import lbfgs_params, parity_split
    for name, loader in PARITY_SETS.items():
        Xtr, Xte, ytr, yte = parity_split(*loader(return_X_y=True))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)   # both converge
            ours = MLPClassifier(dtype="float64", **lbfgs_params()).fit(Xtr, ytr)
            ref = SkMLPClassifier(**lbfgs_params()).fit(Xtr, ytr)
        assert ours.n_iter_ == ref.n_iter_, name
        assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6), name
        assert ours.score(Xte, yte) == ref.score(Xte, yte), name


def test_regressor_same_loss_as_sklearn_in_float64(rng):
    n = int(rng.choice([129, 257]))
    X = rng.normal(size=(n, 5))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=n)
    kw = dict(hidden_layer_sizes=(33,), activation="tanh", solver="lbfgs", alpha=1e-3,
              max_iter=40, random_state=int(rng.integers(2**31)))
    ours = _fit_quiet(MLPRegressor(dtype="float64", **kw), X, y)
    ref = _fit_quiet(SkMLPRegressor(**kw), X, y)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-5, atol=1e-8)


# --------------------------------------------------- the objective itself
def _reference_objective(net, X, T, w, alpha):
    """scikit-learn's lbfgs objective in numpy: (sum_i w_i loss_i + alpha/2
    sum ||W||^2) / sum_i w_i, softmax cross-entropy."""
    a = X
    for l in range(net.n_layers):
        W, b = net._view(l)
        z = a @ W + b
        a = np.tanh(z) if l < net.n_layers - 1 else z
    z = a - a.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    data = -(w * (T * logp).sum(1)).sum()
    l2 = sum(float((W * W).sum()) for W in net.weights)
    return (data + 0.5 * alpha * l2) / w.sum()


def test_objective_value_and_gradient_with_alpha_and_weights(rng):
    """The function L-BFGS-B minimises: its value is scikit-learn's objective
    (alpha and sample weights normalised by the summed weight), and its
    gradient matches central differences of that value."""
    n, d, k = int(rng.choice([33, 129])), 5, 3
    X, y = _classes(rng, n, d, k)
    net = Network([d, 7, k], activation="tanh", output="softmax", dtype="float64",
                  seed=int(rng.integers(2**31)))
    T = make_targets(net, y)
    w = rng.uniform(0.1, 3.0, n)
    alpha = float(rng.uniform(0.1, 2.0))
    objective = FullBatchObjective(net, X, T, w, l2=alpha / w.sum())
    loss, grad = objective()
    grad = grad.copy()
    assert loss == pytest.approx(_reference_objective(net, X, T, w, alpha), rel=1e-12)
    h = 1e-6
    for i in rng.choice(net.n_params, size=40, replace=False):
        assert grad[i] == pytest.approx(central_difference(net.params, i,
                                                           lambda: objective()[0], h),
                                        rel=1e-5, abs=1e-9)


def test_reported_loss_is_the_objective_at_the_final_weights(rng):
    """The estimator's alpha / sample-weight normalisation: loss_ equals the
    reference objective evaluated at coefs_ / intercepts_."""
    n = int(rng.choice([129, 257]))
    X, y = _classes(rng, n)
    w = rng.uniform(0.2, 4.0, n)
    alpha = float(rng.uniform(0.01, 1.0))
    est = _fit_quiet(MLPClassifier((9,), activation="tanh", solver="lbfgs", alpha=alpha,
                                   max_iter=25, dtype="float64",
                                   random_state=int(rng.integers(2**31))), X, y,
                     sample_weight=w)
    T = np.eye(3)[np.searchsorted(est.classes_, y)]
    assert est.loss_ == pytest.approx(_reference_objective(est._network, X, T, w, alpha),
                                      rel=1e-10)


# ------------------------------------------------------------- stopping
def _warning_texts(record):
    return [str(w.message) for w in record if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("limit", ["max_iter", "max_fun"])
def test_stops_at_max_iter_and_max_fun_with_sklearns_warning(rng, limit):
    X, y = _classes(rng, int(rng.choice([129, 333])))
    cap = int(rng.integers(3, 9))
    kw = dict(hidden_layer_sizes=(17,), solver="lbfgs", random_state=int(rng.integers(99)),
              tol=0.0, **({"max_iter": cap} if limit == "max_iter" else {"max_fun": cap}))
    with warnings.catch_warnings(record=True) as ours_w:
        warnings.simplefilter("always")
        ours = MLPClassifier(dtype="float64", **kw).fit(X, y)
    with warnings.catch_warnings(record=True) as ref_w:
        warnings.simplefilter("always")
        ref = SkMLPClassifier(**kw).fit(X, y)
    assert _warning_texts(ours_w) == _warning_texts(ref_w)
    assert len(_warning_texts(ours_w)) == 1
    assert ours.n_iter_ == ref.n_iter_
    if limit == "max_iter":
        assert ours.n_iter_ == cap
        assert f"(max_iter={cap})" in _warning_texts(ours_w)[0]
    else:
        assert ours.n_iter_ <= cap   # at most one iteration per evaluation
        assert "F,G EVALUATIONS EXCEEDS LIMIT" in _warning_texts(ours_w)[0]
        assert "Increase the number of iterations" not in _warning_texts(ours_w)[0]


def test_no_warning_when_converged(rng):
    X, y = _classes(rng, 129)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = MLPClassifier((9,), solver="lbfgs", tol=1e-2, max_iter=500,
                            random_state=0).fit(X, y)
    assert est.n_iter_ < 500


def test_callback_stops_without_warning(rng):
    X, y = _classes(rng, 129)
    stop = int(rng.integers(2, 6))
    seen = []

    def cb(logs):
        seen.append((logs["epoch"], logs["loss"]))
        return logs["epoch"] == stop

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = MLPClassifier((9,), solver="lbfgs", max_iter=100, tol=0.0, random_state=0,
                            dtype="float64", callbacks=cb).fit(X, y)
    assert [e for e, _ in seen] == list(range(1, stop + 1))
    assert est.n_iter_ == stop
    assert est.loss_ == seen[-1][1]
    # and the model holds that iteration's weights
    T = np.eye(3)[np.searchsorted(est.classes_, y)]
    there = FullBatchObjective(est._network, X, T, np.ones(len(y)), l2=1e-4 / len(y))()[0]
    assert there == pytest.approx(est.loss_, rel=1e-12)
    losses = [l for _, l in seen]
    assert all(b <= a for a, b in zip(losses, losses[1:]))   # L-BFGS-B never goes up


def test_verbose_prints_one_line_per_iteration(rng, capsys):
    X, y = _classes(rng, 33)
    _fit_quiet(MLPClassifier((7,), solver="lbfgs", max_iter=4, tol=0.0, verbose=True,
                             random_state=0), X, y)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("Iteration ")]
    import scipy
    if tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 15):
        assert [line.split(",")[0] for line in lines] == [f"Iteration {i}" for i in
                                                          range(1, 5)]


# ------------------------------------------------------------ state
def test_warm_start_continues_from_the_previous_weights(rng):
    """A warm start restarts L-BFGS-B from the fitted weights, as scikit-learn
    (whose second fit must give the same loss), and lowers the loss further."""
    X, y = _classes(rng, int(rng.choice([129, 257])))
    kw = dict(hidden_layer_sizes=(17,), solver="lbfgs", max_iter=6, tol=0.0,
              warm_start=True, random_state=int(rng.integers(2**31)))
    ours = MLPClassifier(dtype="float64", **kw)
    ref = SkMLPClassifier(**kw)
    _fit_quiet(ours, X, y)
    _fit_quiet(ref, X, y)
    first = ours.loss_
    before = ours._network.params.copy()
    _fit_quiet(ours, X, y)
    _fit_quiet(ref, X, y)
    assert ours.loss_ < first
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
    # a cold fit with the same settings starts over instead
    cold = _fit_quiet(MLPClassifier(dtype="float64", **{**kw, "warm_start": False}), X, y)
    assert cold.loss_ == pytest.approx(first, rel=1e-12)
    assert not np.array_equal(ours._network.params, before)
    assert ours.t_ == 0 and ours.n_iter_ == 6


def test_fitted_attributes_as_sklearn(rng):
    """lbfgs sets n_iter_, loss_, t_ = 0 and none of the stochastic solvers'
    curves; early stopping is ignored (scikit-learn 1.9 does the same)."""
    X, y = _classes(rng, 129)
    kw = dict(hidden_layer_sizes=(9,), solver="lbfgs", max_iter=30, random_state=0)
    plain = _fit_quiet(MLPClassifier(dtype="float64", **kw), X, y)
    early = _fit_quiet(MLPClassifier(dtype="float64", early_stopping=True, **kw), X, y)
    ref = _fit_quiet(SkMLPClassifier(early_stopping=True, **kw), X, y)
    for est in (plain, early, ref):
        assert est.t_ == 0
        assert not [a for a in STOCHASTIC_ONLY if hasattr(est, a)]
        assert isinstance(est.loss_, float)
    assert early.n_iter_ == plain.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(early._network.params, plain._network.params)


def test_warm_start_from_a_stochastic_fit_keeps_its_curves(rng):
    X, y = _classes(rng, 129)
    kw = dict(hidden_layer_sizes=(9,), max_iter=3, random_state=0, warm_start=True)
    ours, ref = MLPClassifier(dtype="float64", solver="sgd", **kw), \
        SkMLPClassifier(solver="sgd", **kw)
    for est in (ours, ref):
        _fit_quiet(est, X, y)
        curve = list(est.loss_curve_)
        est.set_params(solver="lbfgs")
        _fit_quiet(est, X, y)
        assert est.loss_curve_ == curve and est.n_iter_ == 3
    assert ours.t_ == ref.t_
    assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)


def test_stochastic_warm_start_after_lbfgs_is_refused_cleanly(rng):
    X, y = _classes(rng, 33)
    est = _fit_quiet(MLPClassifier((7,), solver="lbfgs", max_iter=5, warm_start=True,
                                   random_state=0), X, y)
    params = est._network.params.copy()
    est.set_params(solver="adam")
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        est.fit(X, y)
    with pytest.raises(ValueError, match="warm_start=False"):
        est.partial_fit(X, y)
    np.testing.assert_array_equal(est._network.params, params)
    est.set_params(warm_start=False)
    _fit_quiet(est, X, y)   # a fresh fit is fine
    assert len(est.loss_curve_) == est.n_iter_


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_partial_fit_is_refused(rng, cls):
    """As scikit-learn: with lbfgs there is no partial_fit (``hasattr`` is False,
    so meta-estimators and the estimator checks do not call it); reading it
    raises AttributeError chained from the reason.  (scikit-learn 1.9's
    regressor gets this wrong and runs lbfgs; the classifier is the reference.)"""
    X = rng.normal(size=(33, 3))
    y = (X[:, 0] > 0).astype(int)
    est = cls((7,), solver="lbfgs", max_iter=5, random_state=0)
    ref = SkMLPClassifier((7,), solver="lbfgs")
    for model in (est, ref):
        assert not hasattr(model, "partial_fit")
        with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as info:
            model.partial_fit(X, y)
        assert str(info.value.__cause__) == ("partial_fit is only available for stochastic "
                                             "optimizers. lbfgs is not stochastic.")
    _fit_quiet(est, X, y)
    assert not hasattr(est, "partial_fit")
    est.set_params(solver="sgd")
    assert hasattr(est, "partial_fit")


def test_lbfgs_without_scikit_learn():
    """The fallback of scikit-learn's available_if (fastnn/_compat.py) in a
    process where scikit-learn cannot be imported."""
    code = ("import sys, warnings\n"
            "sys.modules['sklearn'] = None\n"
            "import numpy as np\n"
            "from fastnn import MLPClassifier\n"
            "X = np.random.default_rng(0).normal(size=(41, 3)); y = (X[:, 0] > 0) * 1\n"
            "est = MLPClassifier((5,), solver='lbfgs', max_iter=4, random_state=0)\n"
            "assert not hasattr(est, 'partial_fit')\n"
            "try:\n"
            "    est.partial_fit(X, y)\n"
            "except AttributeError as e:\n"
            "    assert 'lbfgs is not stochastic' in str(e.__cause__), e\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    est.fit(X, y)\n"
            "assert est.n_iter_ == 4 and any('max_iter=4' in str(m.message) for m in w)\n"
            "est.set_params(solver='adam')\n"
            "assert hasattr(est, 'partial_fit')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_save_and_load_an_lbfgs_model(rng, tmp_path):
    X, y = _classes(rng, 129)
    est = _fit_quiet(MLPClassifier((9,), solver="lbfgs", max_iter=20, random_state=0), X, y)
    est.save(tmp_path / "m.npz")
    back = MLPClassifier.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    assert back.loss_ == est.loss_ and back.n_iter_ == est.n_iter_ and back.t_ == 0
    assert not [a for a in STOCHASTIC_ONLY if hasattr(back, a)]


# ------------------------------------------------------------ dtypes
def test_float32_follows_float64(rng):
    """float32 parameters, float64 for scipy: over the first iterations the
    float32 run follows the float64 one to float32 rounding."""
    X, y = _classes(rng, int(rng.choice([129, 257, 333])))
    kw = dict(hidden_layer_sizes=(33,), solver="lbfgs", alpha=1.0, max_iter=10,
              random_state=int(rng.integers(2**31)))
    f64 = _fit_quiet(MLPClassifier(dtype="float64", **kw), X, y)
    f32 = _fit_quiet(MLPClassifier(dtype="float32", **kw), X, y)
    assert f32._network.params.dtype == np.float32
    assert all(c.dtype == np.float32 for c in f32.coefs_)
    assert f32.n_iter_ == f64.n_iter_
    assert f32.loss_ == pytest.approx(f64.loss_, rel=1e-4)
    assert np.mean(f32.predict(X) == f64.predict(X)) > 0.97


# ------------------------------------------------------------ errors
def test_missing_scipy_names_the_extra(rng, monkeypatch):
    X, y = _classes(rng, 33)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    est = MLPClassifier((7,), solver="lbfgs")
    with pytest.raises(ImportError, match=r'pip install "fastnn\[lbfgs\]"'):
        est.fit(X, y)
    assert not hasattr(est, "coefs_")
    MLPClassifier((7,), solver="adam", max_iter=2)   # the other solvers need no scipy
    _fit_quiet(MLPClassifier((7,), solver="adam", max_iter=2), X, y)


def test_importing_fastnn_does_not_import_scipy_optimize():
    """fastnn's own imports never reach scipy (numba imports the top-level scipy
    package when it is installed, which is outside fastnn; scikit-learn is kept
    out so that only fastnn's imports are seen)."""
    code = ("import sys\n"
            "sys.modules['sklearn'] = None\n"
            "import fastnn, fastnn.estimators\n"
            "from fastnn import MLPClassifier\n"
            "bad = [m for m in ('scipy.optimize', 'fastnn.lbfgs') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("case", ["nan_X", "short_y", "alpha", "max_fun", "max_iter", "tol",
                                  "sample_weight", "one_class"])
def test_bad_input_errors_are_those_of_the_other_solvers(rng, case):
    X, y = _classes(rng, 33)
    kw, fit = {}, {}
    if case == "nan_X":
        X = X.copy()
        X[int(rng.integers(33)), 0] = np.nan
    elif case == "short_y":
        y = y[:-1]
    elif case in ("alpha", "tol"):
        kw[case] = -1.0
    elif case in ("max_fun", "max_iter"):
        kw[case] = 0
    elif case == "sample_weight":
        fit["sample_weight"] = -np.ones(33)
    else:
        y = np.zeros(33, dtype=int)
    errors = []
    for solver in ("lbfgs", "adam"):
        with pytest.raises(ValueError) as info:
            MLPClassifier((7,), solver=solver, **kw).fit(X, y, **fit)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    if case in ("alpha", "tol", "max_fun", "max_iter"):
        assert case in errors[0]


def test_runs_without_threadpoolctl(rng, monkeypatch):
    """threadpoolctl only pins scipy's BLAS to one thread (speed): without it the
    fit is the same."""
    X, y = _classes(rng, 129)
    kw = dict(hidden_layer_sizes=(9,), solver="lbfgs", max_iter=10, random_state=0,
              dtype="float64")
    with_it = _fit_quiet(MLPClassifier(**kw), X, y)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    monkeypatch.setattr(fastnn.lbfgs, "_BLAS_CONTROLLER", None)
    without = _fit_quiet(MLPClassifier(**kw), X, y)
    assert fastnn.lbfgs._BLAS_CONTROLLER is None   # the fallback ran
    assert without.n_iter_ == with_it.n_iter_
    assert without.loss_ == pytest.approx(with_it.loss_, rel=1e-9)


def test_blas_runs_on_one_thread_during_the_minimisation_only(rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, y = _classes(rng, 129)

    def blas_threads():
        return {i["filepath"]: i["num_threads"]
                for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    during = []
    _fit_quiet(MLPClassifier((9,), solver="lbfgs", max_iter=3, random_state=0,
                             callbacks=lambda logs: during.append(blas_threads())), X, y)
    assert during and all(set(d.values()) == {1} for d in during)
    assert blas_threads() == before


@parametrize_with_checks(
    [MLPClassifier(solver="lbfgs", max_iter=100, random_state=0, dtype="float64"),
     MLPRegressor(solver="lbfgs", max_iter=100, random_state=0, dtype="float64")])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
