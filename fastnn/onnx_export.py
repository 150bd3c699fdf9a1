"""ONNX export: a fastnn network or estimator as a plain ONNX graph.

The graph is the forward pass written out in standard operators (opset
:data:`OPSET`, IR version :data:`IR_VERSION`): for each layer a ``Gemm``
(``h @ W + b``) followed by ``Relu`` / ``Sigmoid`` / ``Tanh`` (nothing for
'identity'), then the output layer's ``Softmax`` or ``Sigmoid``.  It runs in
onnxruntime and any other runtime that implements those operators.

Input: ``X``, shape (N, n_features), float32 or float64 (the model's dtype).
Outputs, by the kind of model:

* softmax (multi-class) and estimator binary / multi-class classifiers:
  ``label`` (N,) and ``probabilities`` (N, n_classes).  A bare network's
  labels are class indices (int64, like :meth:`Network.predict`); an
  estimator's are its ``classes_`` (int64, float, bool or string tensor,
  looked up with ``Gather``).  A binary classifier has one logistic output in
  fastnn; its ``probabilities`` are ``[1 - p, p]``, shape (N, 2), like
  ``predict_proba``.
* sigmoid (multi-label): ``label`` (N, n_labels) int64 0/1 (``p > 0.5``)
  and ``probabilities`` (N, n_labels).
* linear (regression): ``predictions``, (N, n_outputs); for an estimator
  with a 1-D target, (N,) like ``predict``.

``onnx`` is an optional dependency (``pip install "fastnn[onnx]"``),
imported only when :func:`to_onnx` is called.
"""
import numbers

import numpy as np

from . import io
from .network import Network

OPSET = 17
IR_VERSION = 8      # the IR version of opset 17 (ONNX 1.12), read by older runtimes too
INSTALL_HINT = 'pip install "fastnn[onnx]"'
_ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "identity": None}


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package ({exc}); install it with "
                          f"{INSTALL_HINT}") from None
    return onnx, helper, numpy_helper


def _describe(model):
    """(network, kind, classes, squeeze) of a Network or fitted estimator.

    kind is 'multiclass', 'binary', 'multilabel' or 'regression'; classes is
    None for class indices (bare networks) or the estimator's ``classes_``;
    squeeze says the regression output is 1-D."""
    if isinstance(model, Network):
        kind = {"softmax": "multiclass", "sigmoid": "multilabel",
                "linear": "regression"}[model.output]
        return model, kind, None, False
    net = getattr(model, "_network", None)
    if not isinstance(net, Network) or not hasattr(model, "n_outputs_"):
        if hasattr(model, "get_params") and hasattr(model, "_check_fitted"):
            model._check_fitted()   # a fastnn estimator before fit: NotFittedError
        raise TypeError(f"model must be a fastnn Network or a fitted fastnn MLPClassifier "
                        f"/ MLPRegressor; got {type(model).__name__}")
    if hasattr(model, "classes_"):
        kind = model._kind
        return net, kind, (None if kind == "multilabel" else np.asarray(model.classes_)), False
    return net, "regression", None, model.n_outputs_ == 1 and net.sizes[-1] == 1


def _classes_tensor(numpy_helper, classes):
    """The constant tensor of class labels for ``Gather``."""
    kind = classes.dtype.kind
    if kind == "O":
        if all(isinstance(c, str) for c in classes):
            kind = "U"
        elif all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in classes):
            kind = "i"
        else:
            raise TypeError(f"classes_ of dtype object holding {type(classes[0]).__name__} "
                            "cannot be stored in ONNX: labels must be integers, floats, "
                            "booleans or strings")
    if kind == "U":
        values = np.array([str(c).encode("utf-8") for c in classes], dtype=object)
        return numpy_helper.from_array(values, "classes")
    if kind in "iu":
        return numpy_helper.from_array(np.asarray(classes, dtype=np.int64), "classes")
    if kind in "fb":
        return numpy_helper.from_array(np.asarray(classes), "classes")
    raise TypeError(f"classes_ of dtype {classes.dtype} cannot be stored in ONNX: labels "
                    "must be integers, floats, booleans or strings")


def build_graph(model):
    """The ``onnx.ModelProto`` of ``model`` (a Network or fitted estimator),
    checked with ``onnx.checker``; see the module docstring for its layout."""
    onnx, helper, numpy_helper = _import_onnx()
    from . import __version__
    net, kind, classes, squeeze = _describe(model)
    elem = onnx.TensorProto.FLOAT if net.dtype == np.float32 else onnx.TensorProto.DOUBLE
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    h = "X"
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        z = f"layer{l}_linear"
        nodes.append(helper.make_node("Gemm", [h, const(f"W{l}", W), const(f"b{l}", b)],
                                      [z], name=f"layer{l}_gemm"))
        h = z
        op = _ACTIVATION_OPS[net.activations[l]] if l < net.n_layers - 1 else None
        if op is not None:
            nodes.append(helper.make_node(op, [h], [f"layer{l}_{op.lower()}"],
                                          name=f"layer{l}_{op.lower()}"))
            h = f"layer{l}_{op.lower()}"
    n_out = net.sizes[-1]
    if kind == "regression":
        if squeeze:
            nodes.append(helper.make_node("Reshape", [h, const("shape_n", np.array([-1]))],
                                          ["predictions"], name="to_1d"))
            outputs = [helper.make_tensor_value_info("predictions", elem, ["N"])]
        else:
            nodes.append(helper.make_node("Identity", [h], ["predictions"], name="predictions"))
            outputs = [helper.make_tensor_value_info("predictions", elem, ["N", n_out])]
    elif kind == "multiclass":
        nodes.append(helper.make_node("Softmax", [h], ["probabilities"], axis=1,
                                      name="softmax"))
        index = "label" if classes is None else "label_index"
        nodes.append(helper.make_node("ArgMax", ["probabilities"], [index], axis=1,
                                      keepdims=0, name="argmax"))
        outputs = [helper.make_tensor_value_info("probabilities", elem, ["N", n_out])]
    else:   # one logistic output per label; binary: one for the second class
        p = "probabilities" if kind == "multilabel" else "p_positive"
        nodes.append(helper.make_node("Sigmoid", [h], [p], name="sigmoid"))
        nodes.append(helper.make_node("Greater", [p, const("half", net.dtype.type(0.5))],
                                      ["above_half"], name="threshold"))
        nodes.append(helper.make_node("Cast", ["above_half"],
                                      ["label" if kind == "multilabel" else "positive"],
                                      to=onnx.TensorProto.INT64, name="to_int64"))
        if kind == "binary":
            nodes.append(helper.make_node("Sub", [const("one", net.dtype.type(1.0)), p],
                                          ["p_negative"], name="one_minus_p"))
            nodes.append(helper.make_node("Concat", ["p_negative", p], ["probabilities"],
                                          axis=1, name="proba_columns"))
            nodes.append(helper.make_node("Reshape", ["positive", const("shape_n",
                                                                          np.array([-1]))],
                                          ["label_index"], name="label_index"))
        width = 2 if kind == "binary" else n_out
        outputs = [helper.make_tensor_value_info("probabilities", elem, ["N", width])]
    if kind != "regression":
        if classes is None:
            label_type, label_shape = onnx.TensorProto.INT64, (
                ["N", n_out] if kind == "multilabel" else ["N"])
        else:
            table = _classes_tensor(numpy_helper, classes)
            inits.append(table)
            nodes.append(helper.make_node("Gather", ["classes", "label_index"], ["label"],
                                          axis=0, name="label_lookup"))
            label_type, label_shape = table.data_type, ["N"]
        outputs.insert(0, helper.make_tensor_value_info("label", label_type, label_shape))
    graph = helper.make_graph(
        nodes, "fastnn_mlp", [helper.make_tensor_value_info("X", elem, ["N", net.sizes[0]])],
        outputs, initializer=inits)
    described = type(model).__name__ if not isinstance(model, Network) else repr(net)
    proto = helper.make_model(graph, producer_name="fastnn", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              doc_string=f"fastnn {described}: {kind}")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model, path=None):
    """Export a :class:`fastnn.Network` or a fitted ``MLPClassifier`` /
    ``MLPRegressor`` as an ONNX model.

    Returns the ``onnx.ModelProto``; when ``path`` is given also writes it
    there (atomically: a failure leaves any existing file as it was).  Input
    ``X`` (N, n_features) in the model's dtype; outputs ``label`` and
    ``probabilities`` for classifiers, ``predictions`` for regressors (see
    :mod:`fastnn.onnx_export`).  Needs ``pip install "fastnn[onnx]"``.
    """
    proto = build_graph(model)
    if path is not None:
        data = proto.SerializeToString()
        io.atomic_write(path, lambda fh: fh.write(data))
    return proto
