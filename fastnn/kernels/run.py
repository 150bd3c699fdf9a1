"""Many epochs in one compiled call: the training loop's fast path.

When nothing needs Python between epochs (no callback, progress bar,
validation or checkpoint), the Trainer hands a chunk of epochs to
:func:`train_epochs`: their row orders (drawn in Python, so the shuffling is
the same as epoch by epoch), the learning-rate schedule and the stopping rule
run here, with the same float64 arithmetic as the Python loop
(trainer.Trainer._train_one_epoch, schedules.Plateau.update,
schedules.InvScaling / Adaptive), so the result has the same bits.

Schedule codes and the stopping rule (Plateau on the training loss):

* lr after epoch e: constant; invscaling lr0 / (t + 1)^power_t with t the
  samples seen; adaptive: on a plateau lr / factor while lr > min_lr.
* count += 1 if loss > best - tol else 0; best = min(best, loss); stop when
  count > patience (unless the adaptive schedule lowers the rate instead).
"""
from collections import namedtuple

import numpy as np

from .._jit import jit
from .step import train_epoch, with_settings

CONSTANT = 0
INVSCALING = 1
ADAPTIVE = 2
SCHEDULES = {"Constant": CONSTANT, "InvScaling": INVSCALING, "Adaptive": ADAPTIVE}

# why train_epochs returned
FINISHED = 0
STOPPED = 1
DIVERGED = 2

Plan = namedtuple("Plan", ["schedule", "lr0", "power_t", "factor", "min_lr", "stopping",
                           "tol", "patience"])
"""The chunk's rules: schedule code and settings; ``stopping`` (bool) with tol
and patience (all typed, float64 / int64 / bool)."""

State = namedtuple("State", ["lr", "samples_seen", "best", "count", "steps"])
"""What changes from epoch to epoch outside the arrays (float64 / int64)."""

Data = namedtuple("Data", ["X", "T", "w"])
"""The training rows: inputs, targets and sample weights."""


# Strict IEEE arithmetic here (no fastmath): 'arcp' would turn lr / factor and
# loss / weight into multiplications by a reciprocal and 'afn' could
# approximate pow, and then the chunked loop would round differently from the
# Python loop it stands in for.  The epochs themselves (train_epoch) keep the
# package's flags: LLVM's fast-math flags are per instruction.
@jit(fastmath=False, refcount=False)
def train_epochs(net, data, orders, batch_size, work, update, plan, state, threads, results):
    """Up to orders.shape[0] epochs, epoch e over the rows orders[e] of data.

    Writes each completed epoch's mean loss, accuracy (correct / n) and the
    rate it trained with into results[0, e], results[1, e] and results[2, e]
    (float64).  Returns (epochs
    completed, the State after them, reason): reason 0 = all ran, 1 = the
    stopping rule stopped, 2 = the epoch after the completed ones went
    non-finite (the caller replays it in Python, which restores and raises).
    """
    n = orders.shape[1]
    dt = net.params.dtype.type
    lr = state.lr
    seen = state.samples_seen
    best = state.best
    count = state.count
    steps = state.steps
    u = update
    for e in range(orders.shape[0]):
        this = with_settings(u, dt(lr), e == 0)
        loss, weight, correct, taken, finite = train_epoch(
            net, data.X, data.T, data.w, orders[e], batch_size, work, this, steps, threads)
        mean = loss / weight if weight > 0 else np.nan
        # a non-finite loss: a batch diverged, or an update overflowed (the
        # weights pass adds 0 x the new parameters to the loss; see step.py)
        if not finite or not np.isfinite(mean):
            return e, State(lr, seen, best, count, steps), 2
        steps += taken
        results[0, e] = mean
        results[1, e] = correct / n
        results[2, e] = lr
        seen += n
        # the stopping rule sees the epoch first, then the schedule moves the rate
        if plan.stopping:
            count = count + 1 if mean > best - plan.tol else 0
            best = min(best, mean)
        if plan.schedule == INVSCALING:
            lr = plan.lr0 / (np.float64(seen) + 1.0) ** plan.power_t
        if plan.stopping and count > plan.patience:
            if plan.schedule == ADAPTIVE and lr > plan.min_lr:
                lr = lr / plan.factor
                count = 0
            else:
                return e + 1, State(lr, seen, best, count, steps), 1
    return orders.shape[0], State(lr, seen, best, count, steps), 0
