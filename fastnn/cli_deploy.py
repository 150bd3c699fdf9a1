"""``fastnn predict``, ``fastnn evaluate`` and ``fastnn export``: using a model
saved by ``fastnn train --save`` (or ``MLPClassifier.save``).

Data files, as ``fastnn train`` reads them: a CSV file (one sample per row,
a non-numeric first row is a header and skipped) or an ``.npz`` file with
arrays ``X`` and ``y``.  For ``predict`` a CSV file holds either only the
feature columns (as many as the model has inputs) or the training layout
(those columns and the label last, which is ignored); an ``.npz`` file needs
``X`` only.  ``evaluate`` needs the labels: the training layout.

Every problem with the user's files raises ValueError (or OSError) with a
message that names the file, which the command line prints as one line.
"""
import csv
import io as _io
import json
import os
import warnings

import numpy as np

from . import datasets, io
from ._compat import r2_score
from .saving import load_estimator

PREDICT_DATA_HELP = (
    "a .csv file with one sample per row: either only the feature columns (as many as "
    "the model has inputs) or the training layout (feature columns, then the label, "
    "which is ignored); a non-numeric first row is a header and skipped. Or a .npz "
    "file with an array X")
EVALUATE_DATA_HELP = (
    "labelled data in the training layout: a .csv file with the feature columns and "
    "the label last (a non-numeric first row is a header and skipped), or a .npz file "
    "with arrays X and y")


# ---------------------------------------------------------------- reading
def load_model(path):
    """The estimator saved in ``path`` (ModelFileError, naming it, otherwise)."""
    return load_estimator(path)


def _check_features(path, X, n_features, what="X"):
    if X.dtype.kind not in "biuf" or X.ndim != 2:
        raise ValueError(f"{path}: {what} must be a 2-D array of numbers; it has dtype "
                         f"{X.dtype} and shape {X.shape}")
    if X.shape[1] != n_features:
        raise ValueError(f"{path}: {what} has {X.shape[1]} columns; the model expects "
                         f"{n_features} features")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        row = int(np.argwhere(~np.isfinite(X))[0][0])
        raise ValueError(f"{path}: row {row + 1} of {what} holds NaN or infinity")
    return X


def _read_npz(path, names):
    """The arrays ``names`` (strings) of an .npz file, no pickles."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in names if k not in data.files]
            if missing:
                raise ValueError(f"{path}: no array named {missing[0]!r}; it holds "
                                 f"{data.files}")
            return [data[k] for k in names]
    except (ValueError, OSError) as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    except Exception as exc:   # zip and zlib errors: a corrupt archive
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: "
                         f"{exc})") from None


def _kind(path):
    lower = os.fspath(path).lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".npz"):
        return "npz"
    raise ValueError(f"{path}: data must be a .csv or a .npz file")


def read_features(path, n_features):
    """X (float64) for prediction, by the rule in the module docstring."""
    if _kind(path) == "npz":
        (X,) = _read_npz(path, ["X"])
        return _check_features(path, X, n_features)
    data = datasets.read_csv_matrix(path)
    if data.shape[1] == n_features + 1:
        data = data[:, :-1]   # the training layout: the label column is ignored
    elif data.shape[1] != n_features:
        raise ValueError(f"{path}: {data.shape[1]} columns; the model expects {n_features} "
                         f"feature columns (or {n_features + 1}: the features, then the "
                         "label)")
    return _check_features(path, data, n_features)


def read_labelled(path, n_features):
    """(X float64, y) for evaluation: the training layout."""
    if _kind(path) == "npz":
        X, y = _read_npz(path, ["X", "y"])
        X = _check_features(path, X, n_features)
    else:
        X, y = datasets.load_csv(path)   # the label is the last column
        if X.shape[1] != n_features:
            raise ValueError(f"{path}: {X.shape[1] + 1} columns; evaluating this model "
                             f"needs {n_features} feature columns and the label last "
                             f"({n_features + 1} columns)")
        X = _check_features(path, X, n_features)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    return X, y


# ---------------------------------------------------------------- writing
def _table(header, rows):
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def prediction_csv(est, X, proba=False):
    """The CSV text of ``est``'s predictions for X: a header row, then one row
    per sample (labels; with ``proba`` one probability per class; regression
    values)."""
    digits = 9 if est._network.dtype == np.float32 else 17

    def number(v):
        return f"{float(v):.{digits}g}"

    is_classifier = hasattr(est, "classes_")
    if proba:
        if not is_classifier:
            raise ValueError(f"--proba needs a classifier; the model is an "
                             f"{type(est).__name__} (its predictions are values)")
        P = est.predict_proba(X)
        return _table([f"proba_{c}" for c in est.classes_],
                      [[number(v) for v in row] for row in P])
    pred = est.predict(X)
    if not is_classifier:
        pred = pred.reshape(len(X), -1)
        header = ["prediction"] if pred.shape[1] == 1 else \
            [f"prediction_{j}" for j in range(pred.shape[1])]
        return _table(header, [[number(v) for v in row] for row in pred])
    if est._kind == "multilabel":
        return _table([f"label_{j}" for j in range(pred.shape[1])],
                      [[int(v) for v in row] for row in pred])
    return _table(["label"], [[v] for v in pred.tolist()])


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (an existing file stays as it was
    if anything fails)."""
    data = text.encode("utf-8")
    io.atomic_write(path, lambda fh: fh.write(data))


# ------------------------------------------------------------- evaluation
def _classification_metrics(est, X, y, path):
    classes = est.classes_
    if est._kind == "multilabel":
        n_labels = len(classes)
        if y.ndim != 2 or y.shape[1] != n_labels or not np.isin(y, (0, 1)).all():
            raise ValueError(f"{path}: y has shape {y.shape}; the model is multi-label with "
                             f"{n_labels} labels: y must be an (n, {n_labels}) 0/1 array "
                             "(in a .npz file)")
        P = est.predict_proba(X).astype(np.float64)
        eps = np.finfo(P.dtype).eps
        P = np.clip(P, eps, 1 - eps)
        loss = float(np.mean(-(y * np.log(P) + (1 - y) * np.log1p(-P)).sum(axis=1)))
        pred = est.predict(X).astype(np.int64)
        matrices = [[[int(np.sum((y[:, j] == t) & (pred[:, j] == p))) for p in (0, 1)]
                     for t in (0, 1)] for j in range(n_labels)]
        return {"task": "multilabel classification", "loss": loss,
                "accuracy": float(np.mean(np.all(pred == y, axis=1))),
                "labels": list(range(n_labels)), "confusion_matrices": matrices}
    if y.ndim != 1:
        raise ValueError(f"{path}: y has shape {y.shape}; this classifier needs one label "
                         "per row")
    try:
        known = np.isin(y, classes)
    except TypeError:
        known = np.zeros(len(y), dtype=bool)
    if not known.all():
        unknown = np.unique(y[~known]).tolist()
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the model's classes "
                         f"{classes.tolist()}")
    true_idx = np.searchsorted(classes, y)
    P = est.predict_proba(X).astype(np.float64)
    eps = np.finfo(P.dtype).eps
    loss = float(np.mean(-np.log(np.clip(P[np.arange(len(y)), true_idx], eps, 1.0))))
    pred_idx = np.searchsorted(classes, est.predict(X))
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (true_idx, pred_idx), 1)
    return {"task": "classification", "loss": loss,
            "accuracy": float(np.mean(true_idx == pred_idx)),
            "classes": classes.tolist(), "confusion_matrix": matrix.tolist()}


def _regression_metrics(est, X, y, path):
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{path}: y must hold numbers; it has dtype {y.dtype}")
    n_out = est._network.sizes[-1]
    if y.size != len(X) * n_out:
        raise ValueError(f"{path}: y has shape {y.shape}; the model predicts {n_out} "
                         f"value(s) per row")
    Y = y.reshape(len(X), n_out).astype(np.float64)
    pred = est.predict(X).reshape(len(X), n_out)
    err = pred - Y
    return {"task": "regression", "r2": r2_score(Y, pred),
            "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}


def evaluate(est, X, y, path):
    """The metrics of ``est`` on (X, y) as a JSON-able dict: loss, accuracy and a
    confusion matrix (rows: true, columns: predicted) for classifiers; R^2, MAE
    and RMSE for regressors."""
    metrics = (_classification_metrics if hasattr(est, "classes_")
               else _regression_metrics)(est, X, y, path)
    return {"n_samples": int(len(X)), **metrics}


def format_metrics(metrics):
    """The text report of :func:`evaluate`'s dict."""
    lines = [f"samples   {metrics['n_samples']}"]
    if metrics["task"] == "regression":
        lines += [f"R^2       {metrics['r2']:.6f}", f"MAE       {metrics['mae']:.6g}",
                  f"RMSE      {metrics['rmse']:.6g}"]
        return "\n".join(lines) + "\n"
    lines += [f"loss      {metrics['loss']:.6f}", f"accuracy  {metrics['accuracy']:.4f}"]
    if metrics["task"] == "multilabel classification":
        lines.append("confusion matrix per label ([[tn, fp], [fn, tp]]):")
        lines += [f"  label {j}: {m}" for j, m in enumerate(metrics["confusion_matrices"])]
        return "\n".join(lines) + "\n"
    names = [str(c) for c in metrics["classes"]]
    matrix = metrics["confusion_matrix"]
    width = max(len(s) for s in names + [str(v) for row in matrix for v in row] + ["true"])
    lines.append("confusion matrix (rows: true label, columns: predicted label):")
    lines.append(" ".join(["true".rjust(width)] + [s.rjust(width) for s in names]))
    for name, row in zip(names, matrix):
        lines.append(" ".join([name.rjust(width)] + [str(v).rjust(width) for v in row]))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- commands
def predict_command(args, out):
    """``fastnn predict MODEL DATA [--out FILE] [--proba]``; returns 0."""
    est = load_model(args.model)
    X = read_features(args.data, est.n_features_in_)
    with warnings.catch_warnings():   # a CSV file has no column names to check
        warnings.filterwarnings("ignore", "X does not have valid feature names")
        text = prediction_csv(est, X, proba=args.proba)
    if args.out:
        write_text(args.out, text)
        print(f"wrote {len(X)} predictions to {args.out}", file=out)
    else:
        out.write(text)
    return 0


def evaluate_command(args, out):
    """``fastnn evaluate MODEL DATA [--json]``; returns 0."""
    est = load_model(args.model)
    X, y = read_labelled(args.data, est.n_features_in_)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "X does not have valid feature names")
        metrics = evaluate(est, X, y, args.data)
    if args.json:
        out.write(json.dumps({"model": args.model, "data": args.data, **metrics}) + "\n")
    else:
        out.write(f"{args.model} ({type(est).__name__}) on {args.data}\n"
                  + format_metrics(metrics))
    return 0


def export_command(args, out):
    """``fastnn export MODEL --onnx FILE``; returns 0.  MODEL may hold an
    estimator or a bare network (``fastnn.save``)."""
    from .onnx_export import OPSET, to_onnx
    net, extra = io.load(args.model, return_extra=True)
    model = load_estimator(args.model) if "estimator" in extra else net
    proto = to_onnx(model, args.onnx)
    outputs = ", ".join(o.name for o in proto.graph.output)
    print(f"wrote {args.onnx}: ONNX opset {OPSET}, input X (N, {net.sizes[0]}) "
          f"{net.dtype.name}, outputs {outputs}", file=out)
    return 0
