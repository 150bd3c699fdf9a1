"""What the training loop decides between epochs: the learning rate and when to stop.

The :class:`~fastnn.Trainer` owns one of each and calls them after every
epoch; the estimators map scikit-learn's ``learning_rate``, ``tol``,
``n_iter_no_change`` and ``early_stopping`` onto them.  Each keeps its state
in plain attributes (``get_state`` / ``set_state``) so that a checkpoint or a
rolled-back epoch restores it exactly.

* :class:`Constant`   the optimizer's rate, unchanged.
* :class:`InvScaling` lr = lr0 / (t + 1)^power_t, t = samples seen so far
  (scikit-learn's 'invscaling').
* :class:`Adaptive`   on a plateau the rate is divided by ``factor`` instead of
  stopping, until it falls to ``min_lr`` (scikit-learn's 'adaptive').
* :class:`Plateau`    the stopping rule: count the epochs whose monitored value
  did not improve by ``tol``; stop when the count exceeds ``patience``
  (scikit-learn's tol / n_iter_no_change, on the training loss or on the
  validation score, optionally restoring the best weights at the end).
"""
import math

from . import _validation as V


class Constant:
    """A constant learning rate: the optimizer's own ``lr``."""

    name = "constant"

    def after_epoch(self, optimizer, samples_seen):
        """Set the rate for the next epoch (here: leave it)."""

    def on_plateau(self, optimizer):
        """Return True if the rate was lowered instead of stopping (never here)."""
        return False

    def get_state(self):
        """The schedule's state as JSON-able values."""
        return {}

    def set_state(self, state):
        """Restore what :meth:`get_state` returned."""


class InvScaling(Constant):
    """lr = lr0 / (samples_seen + 1) ** power_t after each epoch."""

    name = "invscaling"

    def __init__(self, lr0, power_t=0.5):
        self.lr0 = V.check_float(lr0, "lr0", low=0.0, low_open=True)
        self.power_t = V.check_float(power_t, "power_t", low=0.0)

    def after_epoch(self, optimizer, samples_seen):
        """Scale the rate by the number of samples seen so far."""
        optimizer.lr = self.lr0 / (samples_seen + 1) ** self.power_t


class Adaptive(Constant):
    """Divide the rate by ``factor`` when training stalls, instead of stopping,
    while it is above ``min_lr``."""

    name = "adaptive"

    def __init__(self, factor=5.0, min_lr=1e-6):
        self.factor = V.check_float(factor, "factor", low=1.0, low_open=True)
        self.min_lr = V.check_float(min_lr, "min_lr", low=0.0)

    def on_plateau(self, optimizer):
        """Lower the rate and return True, or return False (stop) at ``min_lr``."""
        if optimizer.lr <= self.min_lr:
            return False
        optimizer.lr /= self.factor
        return True


class Plateau:
    """Stop when the monitored value has not improved by ``tol`` for more than
    ``patience`` epochs in a row.

    monitor: 'loss' (the training loss, lower is better) or 'val_score' (the
    validation score, higher is better: accuracy for classifiers, R^2 for
    regression; needs validation data).  restore_best: at the end of the fit,
    put back the parameters of the epoch with the best monitored value.
    """

    def __init__(self, monitor="loss", tol=1e-4, patience=10, restore_best=False):
        if monitor not in ("loss", "val_score"):
            raise ValueError(f"monitor must be 'loss' or 'val_score'; got {monitor!r}")
        self.monitor = monitor
        self.tol = V.check_float(tol, "tol", low=0.0)
        self.patience = V.check_positive_int(patience, "patience")
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self):
        """Forget the best value and the count (a new run)."""
        self.best = math.inf if self.monitor == "loss" else -math.inf
        self.count = 0

    def update(self, logs):
        """Count this epoch; return True when its value is the best so far
        (strictly better, without ``tol``: the weights worth keeping)."""
        if self.monitor == "loss":
            value = logs["loss"]
            self.count = self.count + 1 if value > self.best - self.tol else 0
            improved = value < self.best
            self.best = min(self.best, value)
        else:
            value = logs["validation_score"]
            self.count = self.count + 1 if value < self.best + self.tol else 0
            improved = value > self.best
            self.best = max(self.best, value)
        return improved

    @property
    def exhausted(self):
        """True once more than ``patience`` epochs in a row did not improve."""
        return self.count > self.patience

    def get_state(self):
        """The rule's state as JSON-able values."""
        return {"best": _json_float(self.best), "count": self.count}

    def set_state(self, state):
        """Restore what :meth:`get_state` returned."""
        self.best = float(state["best"])
        self.count = int(state["count"])


def _json_float(value):
    return value if math.isfinite(value) else repr(value)   # 'inf' / '-inf' as text


def schedule_from_state(name, settings):
    """A schedule rebuilt from its name and settings (checkpoints)."""
    kinds = {cls.name: cls for cls in (Constant, InvScaling, Adaptive)}
    if name not in kinds:
        raise ValueError(f"unknown learning-rate schedule {name!r}")
    return kinds[name](**settings)


def schedule_settings(schedule):
    """The constructor arguments of ``schedule`` (checkpoints)."""
    return {k: v for k, v in vars(schedule).items()}
