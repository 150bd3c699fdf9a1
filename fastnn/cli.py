"""The ``fastnn`` command line.  ``fastnn train`` with no options trains a
2-100-3 relu network on the spiral data and prints its progress and accuracy;
``fastnn compile`` fills numba's cache ahead of time."""
import argparse
import sys
import time
import warnings

import numpy as np

from . import _compile_notice, datasets
from ._compat import ConvergenceWarning
from ._estimator_io import load_estimator
from .estimators import MLPClassifier, MLPRegressor


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
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    from .compile import build_parser as compile_options
    compile_options(sub.add_parser(
        "compile", help="compile every kernel into numba's cache ahead of time (Docker, CI)"))
    return parser


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

    def report(logs):
        epoch = logs["epoch"]
        if not args.quiet and (epoch % report_every == 0 or epoch == 1):
            acc = "" if logs["accuracy"] is None else f"  accuracy {logs['accuracy']:.4f}"
            val = "" if "validation_score" not in logs \
                else f"  validation {logs['validation_score']:.4f}"
            print(f"epoch {epoch:6d}  loss {logs['loss']:.6f}{acc}{val}", file=out,
                  flush=True)
        return False

    est.set_params(callbacks=[report])
    print(f"fastnn: {type(est).__name__}(hidden={list(est.hidden_layer_sizes)}, "
          f"activation={est.activation!r}, dtype={est.dtype}) on {args.data}: "
          f"{X.shape[0]} samples, up to {args.epochs} epochs, batch {params['batch_size']}, "
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
    print(f"final loss {final:.6f}  {name} {score:.4f}  ({seconds:.2f} s{stopped})", file=out)
    if args.save:
        est.save(args.save)
        print(f"saved model to {args.save}", file=out)
    if args.plot:
        _plot(args.plot, est, X, y, out)
    return 0


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
        return train_command(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
