"""Pictures of training: the loss curve and a 2-D decision boundary (matplotlib,
optional, imported only when a plot is asked for)."""
import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    return plt


def _curves(source):
    """(training loss, validation loss, validation score, score label) from a
    Trainer History or a fitted MLPClassifier / MLPRegressor."""
    if hasattr(source, "loss_curve_"):
        scores = getattr(source, "validation_scores_", None) or []
        label = "validation accuracy" if hasattr(source, "classes_") else "validation R^2"
        return list(source.loss_curve_), [], list(scores), label
    if hasattr(source, "loss") and hasattr(source, "val_loss"):
        return list(source.loss), list(source.val_loss), [], ""
    raise TypeError("plot_history needs a History (Trainer.fit) or a fitted estimator "
                    f"(with loss_curve_); got {type(source).__name__}")


def plot_history(history, path=None, ax=None):
    """Plot the training loss per epoch, and the validation loss (a Trainer
    History) or validation score (an estimator fitted with early_stopping, on
    a second axis); save to ``path`` if given.  Returns the loss axis."""
    loss, val_loss, val_score, score_label = _curves(history)
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(loss) + 1)
    ax.plot(epochs, loss, label="training loss")
    if val_loss:
        ax.plot(epochs, val_loss, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if val_score:
        ax2 = ax.twinx()
        ax2.plot(np.arange(1, len(val_score) + 1), val_score, color="tab:green",
                 label=score_label)
        ax2.set_ylabel(score_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels)
    if own and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return ax


def plot_decision_boundary(network, X, y, path=None, ax=None, resolution=300):
    """Colour the plane by the predicted class of a 2-input classifier and
    scatter the data on top; save to ``path`` if given."""
    if network.sizes[0] != 2:
        raise ValueError(f"a decision boundary needs 2 input features; the network has "
                         f"{network.sizes[0]}")
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5, 5))
    X = np.asarray(X, dtype=np.float64)
    pad = 0.1 * (X.max(0) - X.min(0))
    lo, hi = X.min(0) - pad, X.max(0) + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution),
                         np.linspace(lo[1], hi[1], resolution))
    classes = network.predict(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
    ax.contourf(gx, gy, classes, alpha=0.3, cmap="brg")
    ax.scatter(X[:, 0], X[:, 1], c=np.asarray(y), s=12, cmap="brg", edgecolors="k",
               linewidths=0.3)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    if own and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return ax
