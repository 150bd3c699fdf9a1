"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a fastnn archive (see io.py) of kind "checkpoint": the
parameters, both optimizer state buffers, and in the header's ``extra`` the
optimizer's settings, batch size, L2, shuffling, step count, the shuffling
generator's exact state and the history so far.
"""
import dataclasses

import numpy as np

from . import io
from .optimizers import SGD, Adam
from .trainer import History, Trainer

_OPTIMIZERS = {"SGD": SGD, "Adam": Adam}


def save_checkpoint(trainer, path):
    """Write ``trainer``'s complete state to ``path`` atomically."""
    opt = trainer.optimizer
    extra = {
        "optimizer": {"name": type(opt).__name__, **dataclasses.asdict(opt)},
        "batch_size": trainer.batch_size,
        "l2": trainer.l2,
        "shuffle": trainer.shuffle,
        "steps": trainer.steps,
        "rng": trainer.rng.bit_generator.state,
        "history": trainer.history.as_dict(),
    }
    net = trainer.network
    io.write_archive(path, io.network_meta(net, kind="checkpoint", extra=extra),
                     {"params": net.params, "state1": trainer.state1, "state2": trainer.state2})


def load_checkpoint(path):
    """The Trainer (with its network) saved by :func:`save_checkpoint`."""
    meta, net, arrays = io.read_archive(path, "checkpoint", ["params", "state1", "state2"])
    extra = meta["extra"]
    try:
        opt_fields = dict(extra["optimizer"])
        optimizer = _OPTIMIZERS[opt_fields.pop("name")](**opt_fields)
        trainer = Trainer(net, optimizer=optimizer, batch_size=extra["batch_size"],
                          l2=extra["l2"], shuffle=extra["shuffle"])
        trainer.rng = np.random.default_rng()
        trainer.rng.bit_generator.state = extra["rng"]
        trainer.steps = int(extra["steps"])
        history = History()
        for name, values in extra["history"].items():
            getattr(history, name).extend(values)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise io.ModelFileError(f"{path}: checkpoint header is incomplete or invalid "
                                f"({type(exc).__name__}: {exc})") from None
    net.params[:] = arrays["params"]
    trainer.state1[:] = arrays["state1"]
    trainer.state2[:] = arrays["state2"]
    trainer.history = history
    return trainer
