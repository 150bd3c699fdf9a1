"""Deploying a trained model: ONNX export (checked in a real onnxruntime
session), conversion to and from scikit-learn's MLP, and the command line's
predict / evaluate / export / train --test-fraction."""
import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor

import fastnn
from fastnn import MLPClassifier, MLPRegressor
from fastnn.onnx_export import OPSET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]
TOL = {"float32": 1e-5, "float64": 1e-12}


def _session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _run(proto, X):
    sess = _session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"X": X})))


def _randomized(net, rng):
    """Non-zero biases and weights of scale 1, so each term shows in the output."""
    net.params[:] = rng.standard_normal(net.n_params)
    return net


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


# --------------------------------------------------------------- ONNX: networks
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "linear"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_onnx_network_matches_for_every_activation_and_output(rng, activation, output, dtype):
    net = _randomized(fastnn.Network([7, 33, 5], activation=activation, output=output,
                                     dtype=dtype), rng)
    proto = fastnn.to_onnx(net)
    for n in (1, 33):
        X = rng.standard_normal((n, 7)).astype(dtype)
        got = _run(proto, X)
        if output == "linear":
            assert list(got) == ["predictions"]
            assert got["predictions"].dtype == dtype and got["predictions"].shape == (n, 5)
            np.testing.assert_allclose(got["predictions"], net.predict(X),
                                       rtol=TOL[dtype], atol=TOL[dtype])
            continue
        assert list(got) == ["label", "probabilities"]
        assert got["probabilities"].dtype == dtype
        np.testing.assert_allclose(got["probabilities"], net.predict_proba(X),
                                   rtol=0, atol=TOL[dtype])
        assert got["label"].dtype == np.int64
        assert np.array_equal(got["label"], net.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_network_with_one_activation_per_layer_and_none(rng, dtype):
    deep = _randomized(fastnn.Network([3, 7, 1, 7, 33, 4], activation=ACTIVATIONS,
                                      dtype=dtype), rng)
    flat = _randomized(fastnn.Network([7, 1], output="linear", dtype=dtype), rng)
    for net in (deep, flat):
        X = rng.standard_normal((33, net.sizes[0])).astype(dtype)
        got = _run(fastnn.to_onnx(net), X)
        np.testing.assert_allclose(got["probabilities" if net.output == "softmax"
                                       else "predictions"], net.forward(X),
                                   rtol=TOL[dtype], atol=TOL[dtype])
    ops = [node.op_type for node in fastnn.to_onnx(deep).graph.node]
    assert ops == ["Gemm", "Relu", "Gemm", "Sigmoid", "Gemm", "Tanh", "Gemm", "Gemm",
                   "Softmax", "ArgMax"]


def test_onnx_graph_declares_opset_names_and_dtype(rng):
    net = _randomized(fastnn.Network([7, 5, 3]), rng)
    proto = fastnn.to_onnx(net)
    onnx.checker.check_model(proto)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    assert [i.name for i in proto.graph.input] == ["X"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 7
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    assert proto.producer_name == "fastnn"


# ------------------------------------------------------------ ONNX: estimators
def _labels(rng, kind, n):
    if kind == "binary-str":
        return np.array(["no", "yes"])[rng.integers(0, 2, n)]
    if kind == "multiclass-int":
        return rng.integers(0, 3, n) * 5 + 1                  # classes 1, 6, 11
    if kind == "multiclass-str":
        return np.array(["ant", "bee", "cat", "dog"])[rng.integers(0, 4, n)]
    if kind == "binary-bool":
        return rng.integers(0, 2, n) == 1
    if kind == "binary-float":
        return rng.integers(0, 2, n) * 2.0 - 1.0              # classes -1.0, 1.0
    return rng.integers(0, 2, (n, 3))                         # multilabel


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["binary-str", "binary-bool", "binary-float",
                                  "multiclass-int", "multiclass-str", "multilabel"])
def test_onnx_classifier_gives_labels_and_probabilities(rng, kind, dtype):
    X = rng.standard_normal((40, 7))
    y = _labels(rng, kind, 40)
    if y.ndim == 1:   # every class present at least once
        classes = np.unique(y)
        y[:len(classes)] = classes
    clf = _fit(MLPClassifier((33,), activation="tanh", max_iter=3, dtype=dtype,
                             n_threads=1, random_state=int(rng.integers(1000))), X, y)
    clf._network.params[:] = rng.standard_normal(clf._network.n_params)
    proto = fastnn.to_onnx(clf)
    for n in (1, 7, 33):
        Xt = rng.standard_normal((n, 7))
        got = _run(proto, Xt.astype(dtype))
        proba = clf.predict_proba(Xt)
        assert got["probabilities"].shape == proba.shape
        np.testing.assert_allclose(got["probabilities"], proba, rtol=0, atol=TOL[dtype])
        expected = clf.predict(Xt)
        assert got["label"].shape == expected.shape
        assert got["label"].tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_outputs", [0, 1, 2])   # 0: a 1-D y
def test_onnx_regressor_predictions_have_predicts_shape(rng, n_outputs, dtype):
    X = rng.standard_normal((33, 7))
    y = rng.standard_normal(33) if n_outputs == 0 else rng.standard_normal((33, n_outputs))
    reg = _fit(MLPRegressor((7, 5), activation="relu", max_iter=3, dtype=dtype,
                            n_threads=1), X, y)
    Xt = rng.standard_normal((7, 7))
    got = _run(fastnn.to_onnx(reg), Xt.astype(dtype))["predictions"]
    assert got.shape == reg.predict(Xt).shape
    np.testing.assert_allclose(got, reg.predict(Xt), rtol=TOL[dtype], atol=TOL[dtype])


def test_onnx_written_atomically_and_failures_leave_the_file(tmp_path, rng):
    net = _randomized(fastnn.Network([7, 5, 3], dtype="float64"), rng)
    path = tmp_path / "model.onnx"
    proto = fastnn.to_onnx(net, path)
    assert onnx.load(str(path)) == proto
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    before = path.read_bytes()
    with pytest.raises(TypeError, match="model must be a fastnn Network"):
        fastnn.to_onnx("not a model", path)
    with pytest.raises(NotFittedError):
        fastnn.to_onnx(MLPClassifier(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_importing_fastnn_does_not_import_onnx():
    code = ("import sys, fastnn; fastnn.MLPClassifier; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules, "
            "sorted(m for m in sys.modules if 'onnx' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_missing_onnx_is_an_import_error_naming_the_extra(monkeypatch, rng):
    net = fastnn.Network([2, 3])
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` now fails
    with pytest.raises(ImportError, match=r'pip install "fastnn\[onnx\]"'):
        fastnn.to_onnx(net)


# ------------------------------------------------------- scikit-learn conversion
def _task_data(rng, task, n=33, d=7):
    X = rng.standard_normal((n, d))
    if task == "regression":
        return X, X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    if task == "regression-2":
        return X, X @ rng.standard_normal((d, 2))
    y = _labels(rng, {"binary": "binary-str", "multiclass": "multiclass-int",
                      "multilabel": "multilabel"}[task], n)
    if y.ndim == 1:
        classes = np.unique(y)
        y[:len(classes)] = classes
    return X, y


def _fast_cls(task):
    return MLPRegressor if task.startswith("regression") else MLPClassifier


def _same_predictions(a, b, X, tol=1e-10):
    pa, pb = a.predict(X), b.predict(X)
    assert pa.shape == pb.shape
    if np.asarray(pa).dtype.kind == "f":
        np.testing.assert_allclose(pa, pb, rtol=tol, atol=tol)
    else:
        assert pa.tolist() == pb.tolist()
    if hasattr(a, "predict_proba"):
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=tol)


TASKS = ["binary", "multiclass", "multilabel", "regression", "regression-2"]


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
@pytest.mark.parametrize("task", TASKS)
def test_to_sklearn_predicts_the_same_and_trains_on(rng, task, activation):
    X, y = _task_data(rng, task)
    est = _fit(_fast_cls(task)((7, 5), activation=activation, max_iter=5, dtype="float64",
                               n_threads=1, random_state=0), X, y)
    sk = est.to_sklearn()
    assert isinstance(sk, SkMLPRegressor if task.startswith("regression")
                      else SkMLPClassifier)
    assert sk.activation == activation and sk.hidden_layer_sizes == (7, 5)
    assert sk.n_iter_ == est.n_iter_ and sk.loss_curve_ == est.loss_curve_
    Xt = rng.standard_normal((33, 7))
    _same_predictions(est, sk, Xt)
    _same_predictions(est, sk, Xt[:1])
    assert all(c is not W for c, W in zip(sk.coefs_, est.coefs_))   # copies
    before = [W.copy() for W in sk.coefs_]
    sk.partial_fit(X, y)
    assert len(sk.loss_curve_) == len(est.loss_curve_) + 1
    assert not np.array_equal(before[0], sk.coefs_[0])
    _same_predictions(sk, _fast_cls(task).from_sklearn(sk), Xt)   # trained there, back


@pytest.mark.parametrize("task", TASKS)
def test_from_sklearn_predicts_the_same_and_continues_like_sklearn(rng, task):
    X, y = _task_data(rng, task)
    sk_cls = SkMLPRegressor if task.startswith("regression") else SkMLPClassifier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = sk_cls(hidden_layer_sizes=(7,), activation="tanh", max_iter=5,
                    random_state=3).fit(X, y)
    est = _fast_cls(task).from_sklearn(sk)
    assert est.dtype == "float64" and est.n_iter_ == sk.n_iter_
    assert est.loss_curve_ == sk.loss_curve_ and est.t_ == sk.t_
    Xt = rng.standard_normal((33, 7))
    _same_predictions(sk, est, Xt)
    # one more epoch in each library, both with a fresh optimizer (scikit-learn's
    # removed) and the same shuffling (random_state=3): the same weights
    sk_fresh = copy.deepcopy(sk)
    del sk_fresh._optimizer
    sk_fresh.partial_fit(X, y)
    est.partial_fit(X, y)
    for W_est, W_sk in zip(est.coefs_, sk_fresh.coefs_):
        np.testing.assert_allclose(W_est, W_sk, rtol=1e-9, atol=1e-9)
    assert len(est.loss_curve_) == sk.n_iter_ + 1
    if task != "regression-2":   # there the reported losses differ in scale (README)
        np.testing.assert_allclose(est.loss_curve_[-1], sk_fresh.loss_curve_[-1], rtol=1e-9)
    # warm_start fit continues from the imported weights
    warm = _fast_cls(task).from_sklearn(sk).set_params(warm_start=True, max_iter=2)
    _fit(warm, X, y)
    assert warm.n_iter_ == 2 and len(warm.loss_curve_) == sk.n_iter_ + 2


def test_from_sklearn_keeps_float32_weights_or_the_asked_dtype(rng):
    X, y = _task_data(rng, "multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkMLPClassifier((5,), max_iter=3, random_state=0).fit(X.astype(np.float32), y)
    assert sk.coefs_[0].dtype == np.float32
    est = MLPClassifier.from_sklearn(sk)
    assert est.dtype == "float32" and est._network.dtype == np.float32
    assert np.array_equal(est.coefs_[0], sk.coefs_[0])
    assert MLPClassifier.from_sklearn(sk, dtype="float64")._network.dtype == np.float64
    Xt = rng.standard_normal((7, 7)).astype(np.float32)
    np.testing.assert_allclose(est.predict_proba(Xt), sk.predict_proba(Xt), atol=1e-6)


def test_sklearn_conversion_refusals(rng):
    X, y = _task_data(rng, "multiclass")
    mixed = _fit(MLPClassifier((5, 3), activation=["relu", "tanh"], max_iter=2,
                               n_threads=1), X, y)
    with pytest.raises(ValueError, match="one activation to every hidden layer.*"
                                         r"\['relu', 'tanh'\]"):
        mixed.to_sklearn()
    with pytest.raises(NotFittedError):
        MLPClassifier().to_sklearn()
    with pytest.raises(NotFittedError, match="not fitted"):
        MLPClassifier.from_sklearn(SkMLPClassifier())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk_reg = SkMLPRegressor(hidden_layer_sizes=(3,), max_iter=2).fit(X, X[:, 0])
        lbfgs = SkMLPClassifier((3,), solver="lbfgs", max_iter=2).fit(X, y)
        poisson = SkMLPRegressor(hidden_layer_sizes=(3,), loss="poisson",
                                 max_iter=2).fit(X, np.abs(X[:, 0]))
    with pytest.raises(TypeError, match="sk_model must be a fitted sklearn.neural_network."
                                        "MLPClassifier; got MLPRegressor"):
        MLPClassifier.from_sklearn(sk_reg)
    with pytest.raises(TypeError, match="got str"):
        MLPRegressor.from_sklearn("model")
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        MLPClassifier.from_sklearn(lbfgs)
    with pytest.raises(ValueError, match="'exp'.*poisson"):
        MLPRegressor.from_sklearn(poisson)
    # after the documented fix, lbfgs weights import and predict the same
    est = MLPClassifier.from_sklearn(lbfgs.set_params(solver="adam"))
    _same_predictions(lbfgs, est, X)
    est.partial_fit(X, y)


# ------------------------------------------------------------ the command line
def _cli(*args, cwd):
    """Run ``python -m fastnn ARGS`` on this checkout; (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


def _assert_clean_error(status, out, err, *fragments):
    assert status == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fastnn: error: ")
    for fragment in fragments:
        assert fragment in err, err


def _read_csv_out(text):
    lines = text.strip().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


@pytest.fixture
def files(tmp_path, rng):
    """Model and data files: a 3-class classifier with labels 1/6/11 on 7
    features and a one-output regressor (both trained through the Python API),
    and fresh random data in both CSV layouts and as .npz."""
    folder = tmp_path
    X = rng.standard_normal((40, 7))
    y = np.array([1, 6, 11])[np.argmax(X[:, :3], axis=1)]
    clf = _fit(MLPClassifier((5,), max_iter=200, learning_rate_init=0.05, n_threads=1,
                             random_state=0), X, y)
    clf.save(folder / "clf.npz")
    t = X @ rng.standard_normal(7)
    reg = _fit(MLPRegressor((5,), max_iter=50, n_threads=1, random_state=0), X, t)
    reg.save(folder / "reg.npz")
    np.savetxt(folder / "features.csv", X[:33], delimiter=",", fmt="%.17g")
    np.savetxt(folder / "labelled.csv", np.c_[X, y], delimiter=",", fmt="%.17g",
               header=",".join([f"x{i}" for i in range(7)] + ["label"]), comments="")
    np.savetxt(folder / "targets.csv", np.c_[X, t], delimiter=",", fmt="%.17g")
    np.savez(folder / "features.npz", X=X[:1])
    np.savez(folder / "labelled.npz", X=X, y=y)
    return {"dir": folder, "X": X, "y": y, "t": t, "clf": clf, "reg": reg}


def test_cli_version(tmp_path):
    status, out, _ = _cli("--version", cwd=tmp_path)
    assert status == 0 and out.strip() == f"fastnn {fastnn.__version__}"


def test_cli_predict_labels_probabilities_and_values(files):
    d, X, clf, reg = files["dir"], files["X"], files["clf"], files["reg"]
    for data in ("features.csv", "labelled.csv"):      # both layouts
        status, out, err = _cli("predict", "clf.npz", data, cwd=d)
        assert status == 0, err
        header, rows = _read_csv_out(out)
        n = 33 if data == "features.csv" else 40
        assert header == ["label"] and [int(r[0]) for r in rows] == \
            clf.predict(X[:n]).tolist()
    status, out, err = _cli("predict", "clf.npz", "features.npz", "--proba",
                            "--out", "proba.csv", cwd=d)
    assert status == 0 and "wrote 1 predictions to proba.csv" in out, err
    header, rows = _read_csv_out((d / "proba.csv").read_text())
    assert header == ["proba_1", "proba_6", "proba_11"]
    np.testing.assert_allclose(np.array(rows, dtype=float), clf.predict_proba(X[:1]),
                               rtol=1e-6)
    status, out, err = _cli("predict", "reg.npz", "features.csv", cwd=d)
    assert status == 0, err
    header, rows = _read_csv_out(out)
    assert header == ["prediction"]
    np.testing.assert_allclose(np.array(rows, dtype=float)[:, 0], reg.predict(X[:33]),
                               rtol=1e-6, atol=1e-6)


def test_cli_evaluate_classifier_and_regressor(files):
    d, X, y, t = files["dir"], files["X"], files["y"], files["t"]
    clf, reg = files["clf"], files["reg"]
    status, out, err = _cli("evaluate", "clf.npz", "labelled.csv", "--json", cwd=d)
    assert status == 0, err
    result = json.loads(out)
    pred = clf.predict(X)
    assert result["accuracy"] == pytest.approx(np.mean(pred == y))
    assert result["classes"] == [1, 6, 11] and result["n_samples"] == 40
    expected = [[int(np.sum((y == a) & (pred == b))) for b in (1, 6, 11)] for a in (1, 6, 11)]
    assert result["confusion_matrix"] == expected
    P = clf.predict_proba(X)
    assert result["loss"] == pytest.approx(
        -np.mean(np.log(P[np.arange(40), np.searchsorted([1, 6, 11], y)])), rel=1e-6)
    status, out, err = _cli("evaluate", "clf.npz", "labelled.npz", cwd=d)
    assert status == 0, err
    assert f"accuracy  {np.mean(pred == y):.4f}" in out and "confusion matrix" in out
    assert out.splitlines()[-3].split() == ["1", *map(str, expected[0])]
    status, out, err = _cli("evaluate", "reg.npz", "targets.csv", "--json", cwd=d)
    assert status == 0, err
    result = json.loads(out)
    err_ = reg.predict(X) - t
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(err_ ** 2)), rel=1e-6)
    assert result["mae"] == pytest.approx(np.mean(np.abs(err_)), rel=1e-6)
    assert result["r2"] == pytest.approx(reg.score(X, t), rel=1e-6, abs=1e-9)


def test_cli_export_runs_in_onnxruntime(files):
    d, X, clf = files["dir"], files["X"], files["clf"]
    status, out, err = _cli("export", "clf.npz", "--onnx", "clf.onnx", cwd=d)
    assert status == 0 and "outputs label, probabilities" in out, err
    got = _run(onnx.load(str(d / "clf.onnx")), X.astype(np.float32))
    assert got["label"].tolist() == clf.predict(X).tolist()
    np.testing.assert_allclose(got["probabilities"], clf.predict_proba(X), atol=1e-5)


def test_cli_multilabel_model_and_bare_network(tmp_path, rng):
    X = rng.standard_normal((33, 4))
    Y = (X[:, :3] > 0).astype(int)
    clf = _fit(MLPClassifier((7,), max_iter=100, learning_rate_init=0.05, n_threads=1),
               X, Y)
    clf.save(tmp_path / "ml.npz")
    np.savez(tmp_path / "ml.npz.data.npz", X=X, y=Y)
    status, out, err = _cli("predict", "ml.npz", "ml.npz.data.npz", cwd=tmp_path)
    assert status == 0, err
    header, rows = _read_csv_out(out)
    assert header == ["label_0", "label_1", "label_2"]
    assert np.array(rows, dtype=int).tolist() == clf.predict(X).tolist()
    status, out, err = _cli("evaluate", "ml.npz", "ml.npz.data.npz", "--json", cwd=tmp_path)
    assert status == 0, err
    result = json.loads(out)
    assert result["accuracy"] == pytest.approx(np.mean(np.all(clf.predict(X) == Y, axis=1)))
    assert [sum(map(sum, m)) for m in result["confusion_matrices"]] == [33, 33, 33]
    net = _randomized(fastnn.Network([4, 7, 2], output="linear", dtype="float64"), rng)
    fastnn.save(net, tmp_path / "net.npz")
    status, out, err = _cli("export", "net.npz", "--onnx", "net.onnx", cwd=tmp_path)
    assert status == 0 and "outputs predictions" in out, err
    got = _run(onnx.load(str(tmp_path / "net.onnx")), X)["predictions"]
    np.testing.assert_allclose(got, net.predict(X), rtol=1e-12, atol=1e-12)


def test_cli_train_holds_out_a_stratified_test_fraction(tmp_path, rng):
    X = rng.standard_normal((61, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savetxt(tmp_path / "d.csv", np.c_[X, y], delimiter=",")
    status, out, err = _cli("train", "--data", "d.csv", "--hidden", "7", "--epochs", "30",
                            "--optimizer", "adam", "--lr", "0.01", "--quiet",
                            "--test-fraction", "0.3", "--save", "m.npz", cwd=tmp_path)
    assert status == 0, err
    assert "42 samples (19 more held out)" in out          # ceil(0.3 * 61) = 19
    line = out.splitlines()[-2]
    train_acc = float(line.split("training accuracy")[1].split()[0])
    test_acc = float(line.split("held-out accuracy")[1].split()[0])
    assert "(19 rows)" in line and 0 <= test_acc <= 1 and 0 <= train_acc <= 1
    est = MLPClassifier.load(tmp_path / "m.npz")
    assert est.t_ == 42 * 30                               # trained on the 42 rows only
    # stratified: each class keeps its share in the held-out rows (to one row)
    from fastnn import cli
    labels = np.repeat([0, 1, 2], [30, 20, 11])
    _, y_train, _, y_test = cli._hold_out(rng.standard_normal((61, 2)), labels, 0.3, True, 0)
    assert len(y_test) == 19 and len(y_train) == 42
    assert np.all(np.abs(np.bincount(y_test, minlength=3) - 19 * np.array([30, 20, 11]) / 61)
                  < 1)
    status, out, err = _cli("train", "--data", "d.csv", "--test-fraction", "1.5",
                            cwd=tmp_path)
    _assert_clean_error(status, out, err, "--test-fraction must be between 0 and 1")


def test_cli_errors_are_one_line_naming_the_file(files):
    d = files["dir"]
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 this is no zip archive")
    (d / "words.csv").write_text("1,2,3,4,5,6,7\n1,2,x,4,5,6,7\n")
    (d / "short.csv").write_text("1,2,3\n4,5,6\n")
    cases = [
        (("predict", "missing.npz", "features.csv"), ["missing.npz", "cannot be read"]),
        (("predict", "corrupt.npz", "features.csv"), ["corrupt.npz", "not a readable"]),
        (("predict", "clf.npz", "short.csv"), ["short.csv", "3 columns", "expects 7"]),
        (("evaluate", "clf.npz", "features.csv"), ["features.csv", "7 columns",
                                                   "label last"]),
        (("predict", "clf.npz", "words.csv"), ["words.csv", "line 2",
                                               "non-numeric"]),
        (("evaluate", "reg.npz", "words.csv"), ["words.csv", "line 2"]),
        (("predict", "clf.npz", "absent.csv"), ["absent.csv", "No such file"]),
        (("predict", "reg.npz", "features.csv", "--proba"), ["--proba needs a classifier"]),
        (("export", "corrupt.npz", "--onnx", "x.onnx"), ["corrupt.npz"]),
        (("evaluate", "features.csv", "labelled.csv"), ["features.csv"]),
    ]
    for args, fragments in cases:
        _assert_clean_error(*_cli(*args, cwd=d), *fragments)
    assert not (d / "x.onnx").exists()


def test_cli_failed_predict_leaves_the_output_file_untouched(files, tmp_path):
    for name in ("clf.npz", "features.csv"):
        (tmp_path / name).write_bytes((files["dir"] / name).read_bytes())
    (tmp_path / "words.csv").write_text("1,2,3,4,5,6,7\nx,2,3,4,5,6,7\n")
    (tmp_path / "short.csv").write_text("1,2\n")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    out_file = tmp_path / "keep.csv"
    out_file.write_text("what the user had\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("clf.npz", "words.csv"), ("corrupt.npz", "features.csv"),
                 ("clf.npz", "short.csv"), ("missing.npz", "features.csv")):
        _assert_clean_error(*_cli("predict", *args, "--out", "keep.csv", cwd=tmp_path))
        assert out_file.read_text() == "what the user had\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # no temporary left
    status, _, err = _cli("predict", "clf.npz", "features.csv", "--out", "keep.csv",
                          cwd=tmp_path)
    assert status == 0 and out_file.read_text().startswith("label\n"), err
