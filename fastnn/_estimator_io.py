"""Saving a fitted MLPClassifier / MLPRegressor without pickle.

The file is an ordinary fastnn network file (see :mod:`fastnn.io`: ``.npz``
with the flat ``params`` array and a JSON header with a format version,
written atomically).  The header's ``extra`` dict carries the estimator::

    {"estimator": "MLPClassifier" | "MLPRegressor",
     "estimator_version": 1,
     "params": {...constructor parameters, JSON values...},
     "fitted": {"n_iter_", "t_", "loss_curve_", "best_loss_",
                "validation_scores_", "best_validation_score_",
                "n_outputs_", "out_activation_", "feature_names_in_", ...},
     "classes": {"dtype": "<i8" | "<U5" | ... , "values": [...]},   # classifiers
     "kind": "binary" | "multiclass" | "multilabel"}

The stochastic solvers' loss_curve_, best_loss_, validation_scores_,
best_validation_score_ are absent after a solver='lbfgs' fit (as in
scikit-learn) and then absent from the file.

Labels must be JSON-able (integers, floats, booleans, strings); others are
refused with a TypeError that suggests pickle.  The optimizer state is not
saved: ``partial_fit`` after ``load`` starts a fresh optimizer.
"""
import numbers

import numpy as np

from . import io
from .io import ModelFileError

ESTIMATOR_VERSION = 1
_FITTED = ("n_iter_", "t_", "loss_curve_", "loss_", "best_loss_", "validation_scores_",
           "best_validation_score_", "n_outputs_", "out_activation_", "_no_improvement_count")
# Set by the stochastic solvers only (as in scikit-learn): absent after a
# solver='lbfgs' fit, and then absent from the file too.
_STOCHASTIC_ONLY = ("loss_curve_", "best_loss_", "validation_scores_",
                    "best_validation_score_", "_no_improvement_count")


def _json_value(value, name):
    """A JSON-able copy of a parameter / attribute value, or TypeError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if np.isfinite(v) else repr(v)   # inf / nan kept as text
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v, name) for v in value]
    if isinstance(value, dict):   # class_weight={label: weight}: a list of pairs
        return {"__pairs__": [[_json_value(k, name), _json_value(v, name)]
                              for k, v in value.items()]}
    if isinstance(value, (type, np.dtype)):   # e.g. dtype=np.float32
        return np.dtype(value).name
    raise TypeError(f"{name}={value!r} cannot be saved in fastnn's format (not JSON); "
                    "use pickle or joblib for such estimators")


def _hashable(key):
    """A dict key read back from JSON (lists come back for tuples)."""
    return tuple(key) if isinstance(key, list) else key


def _from_json_float(value):
    return float(value) if isinstance(value, str) else value


def _classes_to_json(classes):
    if classes.dtype.kind in "biuU" or classes.dtype.kind == "f":
        return {"dtype": classes.dtype.str, "values": classes.tolist()}
    if classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes):
        return {"dtype": "object-str", "values": [str(c) for c in classes]}
    if classes.dtype.kind == "O" and all(isinstance(c, numbers.Integral)
                                         and not isinstance(c, bool) for c in classes):
        return {"dtype": "object-int", "values": [int(c) for c in classes]}
    raise TypeError(f"classes_ of dtype {classes.dtype} ({classes[:3]!r}...) cannot be "
                    "saved in fastnn's format: labels must be integers, floats, booleans "
                    "or strings. Use pickle or joblib instead.")


def _classes_from_json(spec):
    dtype, values = spec["dtype"], spec["values"]
    if dtype == "object-str" or dtype == "object-int":
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values, dtype=np.dtype(dtype))


def save_estimator(est, path):
    """Write the fitted ``est`` to ``path`` (see the module docstring)."""
    est._check_fitted()
    params = est.get_params(deep=False)
    params["callbacks"] = None   # functions are not data: not saved
    extra = {"estimator": type(est).__name__, "estimator_version": ESTIMATOR_VERSION,
             "params": {k: _json_value(v, k) for k, v in params.items()
                        if k != "random_state" or not hasattr(v, "get_state")},
             "fitted": {k: _json_value(getattr(est, k), k) for k in _FITTED
                        if k not in _STOCHASTIC_ONLY or hasattr(est, k)}}
    if hasattr(est, "feature_names_in_"):
        extra["fitted"]["feature_names_in_"] = [str(c) for c in est.feature_names_in_]
    if hasattr(est, "classes_"):
        extra["classes"] = _classes_to_json(est.classes_)
        extra["kind"] = est._kind
        extra["label_dtype"] = np.dtype(est._label_dtype).str
    io.save(est._network, path, extra=extra)


def load_estimator(path, classes, expected=None):
    """The estimator in ``path``; ``classes`` maps the saved class names to the
    estimator classes (passed in, so this module never imports the
    estimators); ``expected`` (a class) must match if given."""
    net, extra = io.load(path, return_extra=True)
    name = extra.get("estimator")
    if name not in classes:
        raise ModelFileError(f"{path}: holds a bare fastnn network, not an estimator "
                             "(load it with fastnn.load)")
    cls = classes[name]
    if expected is not None and cls is not expected:
        raise ModelFileError(f"{path}: holds a {name}, not a {expected.__name__}")
    if extra.get("estimator_version") != ESTIMATOR_VERSION:
        raise ModelFileError(f"{path}: estimator format version "
                             f"{extra.get('estimator_version')!r}; this fastnn reads "
                             f"{ESTIMATOR_VERSION}")
    try:
        params = dict(extra["params"])
        for key, value in params.items():
            if isinstance(value, dict):   # written by _json_value from a dict
                params[key] = {_hashable(k): v for k, v in value["__pairs__"]}
        if isinstance(params.get("hidden_layer_sizes"), list):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        fitted = {key: extra["fitted"][key] for key in _FITTED
                  if key not in _STOCHASTIC_ONLY or key in extra["fitted"]}
        for key in ("best_loss_", "best_validation_score_", "loss_"):
            if key in fitted:
                fitted[key] = _from_json_float(fitted[key])
        names = extra["fitted"].get("feature_names_in_")
        if name == "MLPClassifier":
            return restore_estimator(cls, net, params, fitted,
                                     _classes_from_json(extra["classes"]), extra["kind"],
                                     np.dtype(extra["label_dtype"]), names)
        return restore_estimator(cls, net, params, fitted, feature_names=names)
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: estimator header is not valid ({type(exc).__name__}: "
                             f"{exc})") from None


def restore_estimator(cls, net, params, fitted, classes=None, kind=None, label_dtype=None,
                      feature_names=None):
    """A fitted ``cls`` (MLPClassifier / MLPRegressor) around the network ``net``.

    ``params`` are its constructor parameters, ``fitted`` holds every name of
    ``_FITTED``; a classifier also needs ``classes`` (its ``classes_``),
    ``kind`` ('binary', 'multiclass' or 'multilabel') and ``label_dtype`` (of
    multi-label predictions); a regressor passes none of them.  The one way a fitted estimator is rebuilt
    without training: used by :func:`load_estimator` and by
    ``from_sklearn``.  Raises ValueError (or TypeError / KeyError) when the
    pieces do not fit together.
    """
    est = cls(**params)
    p = est._checked_params()
    if (p["dtype"] != net.dtype or net.sizes[1:-1] != tuple(p["sizes"])
            or tuple(p["activations"]) != net.activations):
        raise ValueError("parameters do not match the stored network")
    for key in _FITTED:
        if key in fitted:   # the stochastic solvers' attributes are absent after lbfgs
            setattr(est, key, fitted[key])
    if feature_names is not None:
        est.feature_names_in_ = np.asarray([str(c) for c in feature_names], dtype=object)
    if kind is not None or classes is not None:   # a classifier
        if kind not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"kind must be 'binary', 'multiclass' or 'multilabel'; got "
                             f"{kind!r}")
        est.classes_ = classes
        est._kind = kind
        est._label_dtype = np.dtype(label_dtype)
        n_out = len(est.classes_) if est._kind != "binary" else 1
        if net.sizes[-1] != n_out:
            raise ValueError("classes do not match the network's outputs")
    est._network = net
    est._trainer = None
    est._rng = np.random.RandomState(params.get("random_state")
                                     if isinstance(params.get("random_state"), int) else None)
    est.coefs_ = net.weights
    est.intercepts_ = net.biases
    est.n_features_in_ = net.sizes[0]
    est.n_layers_ = len(net.sizes)
    return est
