"""The ``fastnn`` command line.  ``fastnn train`` with no options trains a
2-100-3 relu network on the spiral data and prints its progress and accuracy;
``fastnn predict``, ``evaluate`` and ``export`` use a saved model (see
:mod:`fastnn.cli_deploy`); ``fastnn compile`` fills numba's cache ahead of time."""
import argparse
import sys
import time
import warnings

import numpy as np

from . import __version__, _compile_notice, cli_deploy, datasets
from ._compat import ConvergenceWarning
from .estimators import MLPClassifier, MLPRegressor, _stratified_split
from .saving import load_estimator
from .trainer import every


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, "
                                         f"e.g. 100 or 128,64; got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1; got {text!r}")
    return sizes


def build_parser():
    """The argument parser of ``fastnn``."""
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a network and report its accuracy",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train an MLPClassifier (integer labels) or MLPRegressor "
                                   "with scikit-learn's options; --save / --load use "
                                   "fastnn's model format (.npz + JSON, no pickle).")
    t.add_argument("--data", default="spiral",
                   help="'spiral', a .csv file (label in the last column) or a .npz "
                        "file with arrays X and y")
    t.add_argument("--hidden", "--hidden-layer-sizes", type=_hidden_sizes, default=[100],
                   help="hidden layer sizes, comma-separated ('' for none)")
    t.add_argument("--activation", default="relu",
                   help="hidden activation: relu, logistic (sigmoid), tanh or identity; or "
                        "one per layer, comma-separated")
    t.add_argument("--task", choices=["auto", "classification", "regression"], default="auto",
                   help="auto: classification when every label is an integer")
    t.add_argument("--optimizer", "--solver", choices=["sgd", "momentum", "nesterov", "adam"],
                   default="sgd",
                   help="sgd: plain SGD; momentum / nesterov: SGD with --momentum; adam")
    t.add_argument("--lr", "--learning-rate-init", type=float, default=1.0,
                   help="initial learning rate")
    t.add_argument("--learning-rate", choices=["constant", "invscaling", "adaptive"],
                   default="constant", help="learning-rate schedule (SGD solvers)")
    t.add_argument("--power-t", type=float, default=0.5, help="exponent of 'invscaling'")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--alpha", type=float, default=None,
                   help="scikit-learn's L2 penalty alpha (default: --l2 times the batch "
                        "size, the same penalty)")
    t.add_argument("--l2", type=float, default=1e-3,
                   help="L2 penalty lambda on the mean loss (used when --alpha is not given)")
    t.add_argument("--epochs", "--max-iter", type=int, default=2000, dest="epochs",
                   help="maximum number of epochs")
    t.add_argument("--tol", type=float, default=0.0,
                   help="improvement needed to reset the no-improvement counter")
    t.add_argument("--n-iter-no-change", type=int, default=None,
                   help="stop after this many epochs without improvement (default: never, "
                        "unless --early-stopping, where it is 10)")
    t.add_argument("--early-stopping", action="store_true",
                   help="hold out --validation-fraction, stop when its score stops "
                        "improving and keep the best weights")
    t.add_argument("--validation-fraction", type=float, default=0.1)
    t.add_argument("--batch-size", type=int, default=0, help="0: the whole data set")
    t.add_argument("--no-shuffle", action="store_true", help="keep the row order")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    t.add_argument("--seed", "--random-state", type=int, default=0, dest="seed")
    t.add_argument("--load", metavar="MODEL.npz",
                   help="continue training a model saved with --save (its layers, classes "
                        "and dtype; training options from this command line)")
    t.add_argument("--save", metavar="MODEL.npz", help="write the trained model here")
    t.add_argument("--plot", metavar="LOSS.png",
                   help="write the loss curve here (and, for 2-D data, the decision "
                        "boundary beside it as *_boundary.png); needs matplotlib")
    t.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="hold out this fraction of the rows (stratified by label for "
                        "classification), train on the rest and print the held-out score "
                        "beside the training score")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.set_defaults(func=train_command)
    _add_deploy_commands(sub)
    from .compile import build_parser as compile_options
    compile_options(sub.add_parser(
        "compile", help="compile every kernel into numba's cache ahead of time (Docker, CI)"))
    return parser


def _add_deploy_commands(sub):
    """The predict / evaluate / export subcommands."""
    p = sub.add_parser("predict", help="predict with a saved model",
                       description="Write the predictions of a model saved by fastnn train "
                                   "--save (or MLPClassifier.save) for each row of DATA as "
                                   "CSV with a header row: the labels (classifiers), the "
                                   "probabilities with --proba (one column per class, "
                                   "proba_<class>), or the predicted values (regressors).")
    p.add_argument("model", metavar="MODEL", help="a model file (.npz) saved by fastnn")
    p.add_argument("data", metavar="DATA", help=cli_deploy.PREDICT_DATA_HELP)
    p.add_argument("--out", metavar="FILE",
                   help="write the CSV here (atomically; default: standard output)")
    p.add_argument("--proba", action="store_true",
                   help="class probabilities instead of labels (classifiers only)")
    p.set_defaults(func=cli_deploy.predict_command)
    e = sub.add_parser("evaluate", help="score a saved model on labelled data",
                       description="Loss, accuracy and confusion matrix (classifiers) or "
                                   "R^2, MAE and RMSE (regressors) of a saved model on DATA.")
    e.add_argument("model", metavar="MODEL", help="a model file (.npz) saved by fastnn")
    e.add_argument("data", metavar="DATA", help=cli_deploy.EVALUATE_DATA_HELP)
    e.add_argument("--json", action="store_true", help="print the results as one JSON object")
    e.set_defaults(func=cli_deploy.evaluate_command)
    x = sub.add_parser("export", help="export a saved model to ONNX",
                       description="Write a saved model (estimator or network) as an ONNX "
                                   "graph: input X, outputs label and probabilities "
                                   "(classifiers) or predictions (regressors). Needs "
                                   'pip install "fastnn[onnx]".')
    x.add_argument("model", metavar="MODEL", help="a model file (.npz) saved by fastnn")
    x.add_argument("--onnx", metavar="FILE", required=True,
                   help="the ONNX file to write (atomically)")
    x.set_defaults(func=cli_deploy.export_command)


def _is_classification(y, task):
    y = np.asarray(y)
    is_int = y.ndim == 1 and (y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and np.all(y == np.round(y))))
    return task == "classification" or (task == "auto" and is_int)


def _estimator_params(args, n_samples):
    """Constructor parameters of the estimator from the command-line options."""
    if args.early_stopping:   # the whole training part, without the held-out rows
        n_samples -= int(np.ceil(args.validation_fraction * n_samples))
    batch = args.batch_size or max(n_samples, 1)
    patience = args.n_iter_no_change
    if patience is None:
        patience = 10 if args.early_stopping else max(args.epochs, 1)
    return dict(
        solver="adam" if args.optimizer == "adam" else "sgd",
        momentum=0.0 if args.optimizer == "sgd" else args.momentum,
        nesterovs_momentum=args.optimizer == "nesterov",
        learning_rate_init=args.lr, learning_rate=args.learning_rate, power_t=args.power_t,
        alpha=args.alpha if args.alpha is not None else args.l2 * batch,
        batch_size=batch, max_iter=args.epochs, tol=args.tol, n_iter_no_change=patience,
        early_stopping=args.early_stopping, validation_fraction=args.validation_fraction,
        shuffle=not args.no_shuffle, random_state=args.seed, n_threads=args.threads)


def train_command(args, out=None):
    """Run ``fastnn train`` with parsed ``args``; returns the exit status."""
    out = sys.stdout if out is None else out
    X, y = datasets.load(args.data)
    X = np.asarray(X, dtype=np.float64)
    classify = _is_classification(y, args.task)
    y = np.asarray(y) if classify else np.asarray(y, dtype=np.float64)
    X_test = y_test = None
    if args.test_fraction is not None:
        X, y, X_test, y_test = _hold_out(X, y, args.test_fraction, classify, args.seed)
    params = _estimator_params(args, X.shape[0])
    if args.load:
        est = load_estimator(args.load)
        if isinstance(est, MLPClassifier) != classify:
            raise ValueError(f"{args.load} holds a {type(est).__name__}; the data asks for "
                             f"{'classification' if classify else 'regression'}")
        est.set_params(warm_start=True, **params)
    else:
        acts = args.activation.split(",") if "," in args.activation else args.activation
        cls = MLPClassifier if classify else MLPRegressor
        est = cls(hidden_layer_sizes=tuple(args.hidden), activation=acts,
                  dtype=args.dtype, **params)
    report_every = max(1, args.epochs // 10)

    def report(logs):   # every report_every epochs: the epochs between run compiled
        epoch = logs["epoch"]
        if not args.quiet:
            acc = "" if logs["accuracy"] is None else f"  accuracy {logs['accuracy']:.4f}"
            val = "" if "validation_score" not in logs \
                else f"  validation {logs['validation_score']:.4f}"
            print(f"epoch {epoch:6d}  loss {logs['loss']:.6f}{acc}{val}", file=out,
                  flush=True)
        return False

    est.set_params(callbacks=[every(report_every, report)])
    held = "" if X_test is None else f" ({len(X_test)} more held out)"
    print(f"fastnn: {type(est).__name__}(hidden={list(est.hidden_layer_sizes)}, "
          f"activation={est.activation!r}, dtype={est.dtype}) on {args.data}: "
          f"{X.shape[0]} samples{held}, up to {args.epochs} epochs, batch {params['batch_size']}, "
          f"{args.optimizer} lr={args.lr} ({args.learning_rate}), alpha={params['alpha']:g}",
          file=out)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # max_iter is the plan here
        est.fit(X, y)
    seconds = time.perf_counter() - start
    est.set_params(callbacks=None)
    score = est.score(X, y)
    name = "training accuracy" if classify else "training R^2"
    final = est.loss_curve_[-1] if est.loss_curve_ else float("nan")
    stopped = f", stopped after {est.n_iter_} epochs" if est.n_iter_ < args.epochs else ""
    test = "" if X_test is None else \
        f"  held-out {name.split()[1]} {est.score(X_test, y_test):.4f} ({len(X_test)} rows)"
    print(f"final loss {final:.6f}  {name} {score:.4f}{test}  ({seconds:.2f} s{stopped})",
          file=out)
    if args.save:
        est.save(args.save)
        print(f"saved model to {args.save}", file=out)
    if args.plot:
        _plot(args.plot, est, X, y, out)
    return 0


def _hold_out(X, y, fraction, classify, seed):
    """(X_train, y_train, X_test, y_test): ceil(fraction * n) rows held out,
    stratified by label for classification."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive); got "
                         f"{fraction}")
    n = X.shape[0]
    if n - int(np.ceil(fraction * n)) < 1:
        raise ValueError(f"--test-fraction {fraction} leaves no training rows of {n}")
    strata = np.unique(y, return_inverse=True)[1] if classify else None
    train, test = _stratified_split(n, strata, fraction, np.random.RandomState(seed))
    return X[train], y[train], X[test], y[test]


def _plot(path, est, X, y, out):
    from . import plotting
    plotting.plot_history(est, path)
    net = est._network
    print(f"saved loss curve to {path}", file=out)
    if X.shape[1] == 2 and hasattr(est, "classes_") and est._kind != "multilabel":
        stem = path[:-4] if path.lower().endswith(".png") else path
        boundary = f"{stem}_boundary.png"
        plotting.plot_decision_boundary(net, X, np.searchsorted(est.classes_, y), boundary)
        print(f"saved decision boundary to {boundary}", file=out)


def main(argv=None):
    """Entry point of the ``fastnn`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "compile":
        from .compile import compile_command
        return compile_command(args)
    # a cold cache makes the first fit take seconds: say why, once (stderr)
    _compile_notice.enable()
    try:
        return args.func(args, sys.stdout)
    except (ValueError, TypeError, OSError, ImportError, KeyError) as exc:
        print(f"fastnn: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc):
    """The message of ``exc`` on one line, naming the file of an OSError."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
