"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a fastnn archive (see io.py) of kind "checkpoint": the
parameters, both optimizer state buffers, and in the header's ``extra`` the
optimizer's settings, batch size, L2, the step and sample counters, the epoch
order's exact state (generator state, and scikit-learn's running order), the
learning-rate schedule, the stopping rule's state and the history so far.
This module only reads and writes; :meth:`Trainer.resume` rebuilds the trainer.
"""
import dataclasses

import numpy as np

from . import io
from .epoch_order import InOrder, RunningShuffle, Shuffled
from .optimizers import SGD, Adam
from .schedules import Plateau, schedule_from_state, schedule_settings

_OPTIMIZERS = {"SGD": SGD, "Adam": Adam}
_ORDERS = {"Shuffled": Shuffled, "InOrder": InOrder, "RunningShuffle": RunningShuffle}


def _jsonable(value):
    """``value`` with arrays and tuples turned into lists (for the JSON header)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(trainer, path, owner=None):
    """Write ``trainer``'s complete state to ``path`` atomically; ``owner``: a
    JSON-able dict the trainer's user stores with it (the estimators: what the
    run belongs to)."""
    opt = trainer.optimizer
    stopping = trainer.stopping
    extra = {
        "optimizer": {"name": type(opt).__name__, **dataclasses.asdict(opt)},
        "batch_size": trainer.batch_size,
        "l2": trainer.l2,
        "steps": trainer.steps,
        "samples_seen": trainer.samples_seen,
        "order": {"name": type(trainer.order).__name__,
                  "state": _jsonable(trainer.order.json_state())},
        "schedule": {"name": trainer.schedule.name,
                     "settings": schedule_settings(trainer.schedule)},
        "stopping": None if stopping is None else {
            "monitor": stopping.monitor, "tol": stopping.tol, "patience": stopping.patience,
            "restore_best": stopping.restore_best, "state": stopping.get_state()},
        "history": trainer.history.as_dict(),
        "owner": owner,
    }
    net = trainer.network
    io.write_archive(path, io.network_meta(net, kind="checkpoint", extra=extra),
                     {"params": net.params, "state1": trainer.state1, "state2": trainer.state2})


def read_checkpoint(path):
    """(network, arrays, parts) of a checkpoint: the network with its
    parameters, the optimizer buffers and the rebuilt optimizer, order,
    schedule and stopping rule; ModelFileError if the file is not one."""
    meta, net, arrays = io.read_archive(path, "checkpoint", ["params", "state1", "state2"])
    extra = meta["extra"]
    try:
        opt_fields = dict(extra["optimizer"])
        parts = dict(extra)
        parts["optimizer"] = _OPTIMIZERS[opt_fields.pop("name")](**opt_fields)
        order_cls = _ORDERS[extra["order"]["name"]]
        order = order_cls(np.random.RandomState()) if order_cls is RunningShuffle \
            else order_cls()
        order.set_state(extra["order"]["state"])
        parts["order"] = order
        parts["schedule"] = schedule_from_state(extra["schedule"]["name"],
                                                extra["schedule"]["settings"])
        if extra["stopping"] is not None:
            s = dict(extra["stopping"])
            state = s.pop("state")
            parts["stopping"] = Plateau(**s)
            parts["stopping"].set_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise io.ModelFileError(f"{path}: checkpoint header is incomplete or invalid "
                                f"({type(exc).__name__}: {exc})") from None
    net.params[:] = arrays["params"]
    return net, arrays, parts
