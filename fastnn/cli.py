"""The ``fastnn`` command line.  ``fastnn train`` with no options trains a
2-100-3 relu network on the spiral data and prints its progress and accuracy."""
import argparse
import sys
import time

import numpy as np

from . import datasets, io
from .network import Network
from .optimizers import make_optimizer
from .trainer import Trainer


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
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default="spiral",
                   help="'spiral', a .csv file (label in the last column) or a .npz "
                        "file with arrays X and y")
    t.add_argument("--hidden", type=_hidden_sizes, default=[100],
                   help="hidden layer sizes, comma-separated ('' for none)")
    t.add_argument("--activation", default="relu",
                   help="hidden activation: relu, sigmoid, tanh or identity; or one per "
                        "layer, comma-separated")
    t.add_argument("--task", choices=["auto", "classification", "regression"], default="auto",
                   help="auto: classification when every label is an integer")
    t.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam"],
                   default="sgd")
    t.add_argument("--lr", type=float, default=1.0, help="learning rate")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--l2", type=float, default=1e-3, help="L2 penalty lambda")
    t.add_argument("--epochs", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=0, help="0: the whole data set")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--load", metavar="MODEL.npz",
                   help="start from a saved model instead of fresh weights")
    t.add_argument("--save", metavar="MODEL.npz", help="write the trained model here")
    t.add_argument("--plot", metavar="LOSS.png",
                   help="write the loss curve here (and, for 2-D data, the decision "
                        "boundary beside it as *_boundary.png); needs matplotlib")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    return parser


def _prepare_labels(y, task):
    """(targets for the network, classes or None, output layer name)."""
    y = np.asarray(y)
    is_int = y.ndim == 1 and y.dtype.kind in "biu" or (
        y.ndim == 1 and y.dtype.kind == "f" and np.all(y == np.round(y)))
    if task == "regression" or (task == "auto" and not is_int):
        return y.astype(np.float64), None, "linear"
    classes, indices = np.unique(y, return_inverse=True)
    return indices, classes, "softmax"


def train_command(args, out=None):
    """Run ``fastnn train`` with parsed ``args``; returns the exit status."""
    out = sys.stdout if out is None else out
    X, y = datasets.load(args.data)
    X = np.asarray(X, dtype=np.float64)
    targets, classes, output = _prepare_labels(y, args.task)
    n_out = len(classes) if classes is not None else (1 if targets.ndim == 1 else targets.shape[1])
    acts = args.activation.split(",") if "," in args.activation else args.activation
    if args.load:
        net, extra = io.load(args.load, return_extra=True)
        if classes is not None and extra.get("classes") not in (None, classes.tolist()):
            raise SystemExit(f"fastnn: {args.load} was trained on classes {extra['classes']}, "
                             f"the data has {classes.tolist()}")
    else:
        net = Network([X.shape[1], *args.hidden, n_out], activation=acts, output=output,
                      dtype=args.dtype, seed=args.seed)
    batch = args.batch_size or X.shape[0]
    trainer = Trainer(net, optimizer=make_optimizer(args.optimizer, args.lr, args.momentum),
                      batch_size=batch, l2=args.l2, seed=args.seed)
    print(f"fastnn: {net} on {args.data}: {X.shape[0]} samples, {args.epochs} epochs, "
          f"batch {batch}, {args.optimizer} lr={args.lr}", file=out)
    report_every = max(1, args.epochs // 10)

    def report(tr, epoch, logs):
        if not args.quiet and (epoch % report_every == 0 or epoch == 1):
            acc = "" if logs["accuracy"] is None else f"  accuracy {logs['accuracy']:.4f}"
            print(f"epoch {epoch:6d}  loss {logs['loss']:.6f}{acc}", file=out, flush=True)
        return False

    start = time.perf_counter()
    try:
        history = trainer.fit(X, targets, epochs=args.epochs, callbacks=[report])
    except KeyboardInterrupt:
        print(f"fastnn: interrupted after {len(trainer.history)} epochs", file=out)
        history = trainer.history
    seconds = time.perf_counter() - start
    score = net.score(X, targets)
    name = "training accuracy" if output == "softmax" else "training R^2"
    final = history.loss[-1] if len(history) else float("nan")
    print(f"final loss {final:.6f}  {name} {score:.4f}  ({seconds:.2f} s)", file=out)
    if args.save:
        extra = {"classes": classes.tolist() if classes is not None else None}
        io.save(net, args.save, extra=extra)
        print(f"saved model to {args.save}", file=out)
    if args.plot:
        _plot(args.plot, history, net, X, targets, out)
    return 0


def _plot(path, history, net, X, targets, out):
    from . import plotting
    plotting.plot_history(history, path)
    print(f"saved loss curve to {path}", file=out)
    if X.shape[1] == 2 and net.output == "softmax":
        stem = path[:-4] if path.lower().endswith(".png") else path
        boundary = f"{stem}_boundary.png"
        plotting.plot_decision_boundary(net, X, targets, boundary)
        print(f"saved decision boundary to {boundary}", file=out)


def main(argv=None):
    """Entry point of the ``fastnn`` command."""
    args = build_parser().parse_args(argv)
    try:
        return train_command(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
