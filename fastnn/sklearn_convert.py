"""Conversion between fastnn's estimators and scikit-learn's MLP.

:func:`to_sklearn` gives a fitted ``sklearn.neural_network.MLPClassifier`` /
``MLPRegressor`` holding copies of the weights (in the model's dtype), the
training record (``n_iter_``, ``t_``, ``loss_curve_``, ...) and, for
classifiers, ``classes_`` and the ``_label_binarizer`` that scikit-learn's
``predict`` uses.  :func:`from_sklearn` does the reverse, through the same
code that :func:`fastnn.load_estimator` rebuilds a saved estimator with
(:func:`fastnn._estimator_io.restore_estimator`).

Neither direction carries the optimizer state: a converted model continues
training (``partial_fit``, ``fit`` with ``warm_start=True``) with a fresh
optimizer, as scikit-learn's own does after such a conversion.  Parameters
only one library has are dropped: fastnn's ``dtype`` (the weights keep their
dtype), ``n_threads``, ``callbacks`` and ``class_weight`` on the way to
scikit-learn; on the way back the dtype comes from the weights unless given.
The training record is copied as it is: for a regressor with several outputs
the two libraries report the loss on different scales (fastnn sums the
squared error over outputs, scikit-learn averages it), so there the copied
``loss_curve_`` / ``best_loss_`` are on the other library's scale.
Needs scikit-learn.
"""
import warnings

import numpy as np

from ._estimator_io import restore_estimator
from .network import Network

_TO_SK_ACTIVATION = {"relu": "relu", "sigmoid": "logistic", "tanh": "tanh",
                     "identity": "identity"}
_FROM_SK_ACTIVATION = {v: k for k, v in _TO_SK_ACTIVATION.items()}


def _sklearn_class(est_or_cls):
    """scikit-learn's MLP class matching a fastnn estimator (or its class)."""
    from sklearn.base import ClassifierMixin
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    # fastnn's classifier is built on scikit-learn's ClassifierMixin (which
    # this module needs anyway), so no import of fastnn.estimators: no circle
    cls = est_or_cls if isinstance(est_or_cls, type) else type(est_or_cls)
    return MLPClassifier if issubclass(cls, ClassifierMixin) else MLPRegressor


def _label_binarizer(est):
    """A fitted LabelBinarizer giving scikit-learn's predict ``est``'s labels."""
    from sklearn.preprocessing import LabelBinarizer
    binarizer = LabelBinarizer()
    if est._kind == "multilabel":
        binarizer.fit(np.eye(len(est.classes_), dtype=np.int64))   # multilabel-indicator
    else:
        binarizer.fit(est.classes_)
    return binarizer


def to_sklearn(est):
    """A fitted scikit-learn MLP with the weights of the fitted fastnn ``est``.

    Raises ValueError when scikit-learn cannot represent the model: its MLP
    has one activation for all hidden layers.
    """
    est._check_fitted()
    net = est._network
    if len(set(net.activations)) > 1:
        raise ValueError(f"to_sklearn: scikit-learn's MLP applies one activation to every "
                         f"hidden layer; this model has activation={list(net.activations)} "
                         "(one per layer), which it cannot represent. Export it with "
                         "fastnn.to_onnx instead, or train it with a single activation")
    sk_cls = _sklearn_class(est)
    if net.activations:
        activation = _TO_SK_ACTIVATION[net.activations[0]]
    else:   # no hidden layer: the activation is never applied
        activation = est.activation if est.activation in _FROM_SK_ACTIVATION else "relu"
    if getattr(est, "class_weight", None) is not None:
        warnings.warn("to_sklearn: scikit-learn's MLPClassifier has no class_weight; the "
                      "converted model predicts the same, but further training there "
                      "ignores class_weight", UserWarning, stacklevel=3)
    known = set(sk_cls().get_params(deep=False))
    params = {k: v for k, v in est.get_params(deep=False).items() if k in known}
    params.update(hidden_layer_sizes=tuple(net.sizes[1:-1]), activation=activation)
    sk = sk_cls(**params)
    sk.coefs_ = [W.copy() for W in net.weights]
    sk.intercepts_ = [b.copy() for b in net.biases]
    sk._best_coefs = [W.copy() for W in sk.coefs_]
    sk._best_intercepts = [b.copy() for b in sk.intercepts_]
    sk.n_features_in_ = net.sizes[0]
    if hasattr(est, "feature_names_in_"):
        sk.feature_names_in_ = np.asarray(est.feature_names_in_, dtype=object)
    sk.n_layers_ = len(net.sizes)
    sk.n_outputs_ = net.sizes[-1]
    sk.out_activation_ = est.out_activation_
    sk.n_iter_ = est.n_iter_
    sk.t_ = est.t_
    sk.loss_ = est.loss_
    sk.loss_curve_ = list(est.loss_curve_)
    sk.best_loss_ = est.best_loss_
    sk.validation_scores_ = None if est.validation_scores_ is None \
        else list(est.validation_scores_)
    sk.best_validation_score_ = est.best_validation_score_
    sk._no_improvement_count = est._no_improvement_count
    if hasattr(est, "classes_"):
        sk._label_binarizer = _label_binarizer(est)
        sk.classes_ = sk._label_binarizer.classes_
    return sk


def _kind_of(sk_model):
    """fastnn's task kind of a fitted scikit-learn MLP."""
    if not hasattr(sk_model, "classes_"):
        if sk_model.out_activation_ != "identity":
            raise ValueError(f"from_sklearn: the model's output is "
                             f"{sk_model.out_activation_!r} (loss="
                             f"{getattr(sk_model, 'loss', None)!r}); "
                             "fastnn's MLPRegressor has an identity output with squared "
                             "error only")
        return "regression"
    y_type = getattr(getattr(sk_model, "_label_binarizer", None), "y_type_", None)
    if y_type is None:
        raise ValueError("from_sklearn: the MLPClassifier has no fitted _label_binarizer "
                         "(it is not fitted)")
    if y_type.startswith("multilabel"):
        return "multilabel"
    if y_type not in ("binary", "multiclass"):
        raise ValueError(f"from_sklearn: target type {y_type!r} is not supported")
    return y_type


def from_sklearn(cls, sk_model, dtype=None):
    """A fitted fastnn ``cls`` with the weights of the fitted scikit-learn MLP
    ``sk_model``, ready to predict or to continue training.

    ``dtype`` (``'float32'`` / ``'float64'``) defaults to the dtype of its
    weights.  Raises TypeError for another kind of model, ValueError for a
    model fastnn cannot represent (solver 'lbfgs', a Poisson regressor).
    """
    from ._compat import NotFittedError
    sk_cls = _sklearn_class(cls)
    if not isinstance(sk_model, sk_cls):
        raise TypeError(f"from_sklearn: sk_model must be a fitted sklearn.neural_network."
                        f"{sk_cls.__name__}; got {type(sk_model).__name__}")
    if not hasattr(sk_model, "coefs_"):
        raise NotFittedError(f"from_sklearn: this {sk_cls.__name__} is not fitted yet; call "
                             "its fit first")
    if sk_model.solver == "lbfgs":
        raise ValueError("from_sklearn: solver='lbfgs' is not implemented in fastnn; call "
                         "sk_model.set_params(solver='adam') (or 'sgd') first to import its "
                         "weights with that solver for further training")
    kind = _kind_of(sk_model)
    coefs, intercepts = sk_model.coefs_, sk_model.intercepts_
    if dtype is None:
        dtype = np.asarray(coefs[0]).dtype
        dtype = dtype.name if dtype.name in ("float32", "float64") else "float64"
    sizes = [np.shape(coefs[0])[0]] + [np.shape(W)[1] for W in coefs]
    output = {"regression": "linear", "multiclass": "softmax"}.get(kind, "sigmoid")
    net = Network(sizes, activation=_FROM_SK_ACTIVATION[sk_model.activation], output=output,
                  dtype=dtype, seed=0)
    for l, (W, b) in enumerate(zip(coefs, intercepts)):
        W_net, b_net = net._view(l)
        if np.shape(W) != W_net.shape or np.shape(b) != b_net.shape:
            raise ValueError(f"from_sklearn: coefs_[{l}] / intercepts_[{l}] have shapes "
                             f"{np.shape(W)} / {np.shape(b)}; layer sizes {sizes} need "
                             f"{W_net.shape} / {b_net.shape}")
        W_net[...] = W
        b_net[...] = b
    if not np.isfinite(net.params).all():
        raise ValueError("from_sklearn: the model's weights contain NaN or infinity")
    known = set(cls._get_param_names())
    params = {k: v for k, v in sk_model.get_params(deep=False).items() if k in known}
    params.update(hidden_layer_sizes=tuple(sizes[1:-1]), dtype=net.dtype.name)
    loss_curve = [float(v) for v in getattr(sk_model, "loss_curve_", [])]
    scores = getattr(sk_model, "validation_scores_", None)
    loss = getattr(sk_model, "loss_", None)
    fitted = {
        "n_iter_": int(sk_model.n_iter_), "t_": int(getattr(sk_model, "t_", 0)),
        "loss_curve_": loss_curve, "loss_": None if loss is None else float(loss),
        "best_loss_": getattr(sk_model, "best_loss_", min(loss_curve, default=np.inf)),
        "validation_scores_": None if scores is None else [float(s) for s in scores],
        "best_validation_score_": getattr(sk_model, "best_validation_score_", None),
        "n_outputs_": sk_model.n_outputs_ if kind in ("regression", "multilabel") else 1,
        "out_activation_": sk_model.out_activation_,
        "_no_improvement_count": int(getattr(sk_model, "_no_improvement_count", 0))}
    names = getattr(sk_model, "feature_names_in_", None)
    if kind == "regression":
        return restore_estimator(cls, net, params, fitted, feature_names=names)
    classes = np.arange(sizes[-1]) if kind == "multilabel" else np.asarray(sk_model.classes_)
    return restore_estimator(cls, net, params, fitted, classes, kind, np.int64, names)
