"""Deploying a trained model: ONNX export (checked in a real onnxruntime
session), conversion to and from scikit-learn's MLP, and the command line's
predict / evaluate / export / train --test-fraction."""
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
