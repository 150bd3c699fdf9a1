"""The thin Python training loop: epochs, shuffling, validation, history.

All per-sample and per-batch work happens in one compiled call per epoch
(kernels.step.train_epoch); Python only shuffles, records and reports.
"""
import warnings

import numba
import numpy as np

from . import _validation as V
from ._parallel import parallel_region
from .kernels.step import (GRAD_BLOCK_ROWS, LOSS_GROUP_ROWS, Net, Update, Work, loss_gradient,
                           train_epoch, weight_block_count)
from .optimizers import SGD

# A batch of under MIN_PARALLEL_ROWS rows, or of fewer FLOPs than this
# (about 6 per weight per row), trains on one thread: waking the second thread for each of its parallel
# regions cost more than it gave (measured on 2 cores: spiral 2-100-3, batch
# 300, 0.9 MFLOP per step: 2.19 M samples/s on 1 thread, 1.27 M on 2;
# tiny_batch 784-128-10, batch 16 (one shard): 47 k vs 35 k; mnist 784-256-10,
# batch 128, 156 MFLOP: 52 k vs 80 k).
SERIAL_STEP_FLOPS = 20e6
MIN_PARALLEL_ROWS = 32


class History:
    """Per-epoch record: loss and accuracy on the training rows (averaged over
    the epoch's mini-batches as they were trained), and on validation data when
    given.  Accuracy entries are None for regression."""

    def __init__(self):
        self.loss = []
        self.accuracy = []
        self.val_loss = []
        self.val_accuracy = []

    def as_dict(self):
        """The history as a dict of lists."""
        return {"loss": list(self.loss), "accuracy": list(self.accuracy),
                "val_loss": list(self.val_loss), "val_accuracy": list(self.val_accuracy)}

    def __len__(self):
        return len(self.loss)


def make_targets(network, y, name="y"):
    """Targets T (n x n_outputs, the network's dtype) from labels or values.

    softmax: class indices 0..C-1 (1-D) or per-class probabilities (2-D);
    linear: values (1-D for one output, or 2-D); sigmoid: a 0/1 label matrix.
    """
    n_out = network.sizes[-1]
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers; got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if network.output == "softmax" and arr.ndim == 1:
        if np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices 0..{n_out - 1}")
        labels = arr.astype(np.int64)
        if labels.min() < 0 or labels.max() >= n_out:
            raise ValueError(f"{name} must hold class indices in 0..{n_out - 1}; found "
                             f"{labels.min()}..{labels.max()}")
        T = np.zeros((labels.shape[0], n_out), dtype=network.dtype)
        T[np.arange(labels.shape[0]), labels] = 1
        return T
    if arr.ndim == 1 and n_out == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_out:
        raise ValueError(f"{name} must have shape (n_samples, {n_out}) for this network; "
                         f"got {arr.shape}")
    T = np.ascontiguousarray(arr, dtype=network.dtype)
    if not np.isfinite(T).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return T


def make_workspace(network, batch_size, n_features, n_outputs):
    """Every buffer a training epoch touches (kernels.step.Work), made once per
    fit and reused."""
    dt = network.dtype
    widths = network._dims[1:]
    act_ws = np.empty(batch_size * int(widths.sum()), dtype=dt)
    groups = -(-batch_size // LOSS_GROUP_ROWS)
    return Work(
        # W^T of every layer but the first, for the backward product
        WT=np.empty(network.n_params, dtype=dt),
        # activations a_l and deltas of the whole batch, layer l at act_off[l]
        act_ws=act_ws,
        act_off=network._activation_offsets(batch_size),
        delta_ws=np.empty_like(act_ws),
        grad=np.empty(network.n_params, dtype=dt),
        # per thread: one block of dW in the weights pass (see kernels.step)
        scratch=np.empty((numba.config.NUMBA_NUM_THREADS,
                          GRAD_BLOCK_ROWS * int(widths.max())), dtype=dt),
        Xb=np.empty((batch_size, n_features), dtype=dt),
        Tb=np.empty((batch_size, n_outputs), dtype=dt),
        wb=np.empty(batch_size, dtype=dt),
        group_loss=np.empty(groups, dtype=np.float64),
        group_correct=np.empty(groups, dtype=np.int64),
        l2_parts=np.empty(weight_block_count(network._dims), dtype=np.float64))


def _net_bundle(network):
    """The network as the compiled step sees it (kernels.step.Net)."""
    return Net(network.params, network._offs, network._dims, network._acts,
               network._output_code)


class _Snapshot:
    """The trainer's state at the start of an epoch, to roll back to if the
    epoch does not complete (buffers allocated once, refilled each epoch)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.params = np.empty_like(trainer.network.params)
        self.state1 = np.empty_like(trainer.state1)
        self.state2 = np.empty_like(trainer.state2)

    def take(self):
        t = self.trainer
        np.copyto(self.params, t.network.params)
        np.copyto(self.state1, t.state1)
        np.copyto(self.state2, t.state2)
        self.steps = t.steps
        self.rng_state = t.rng.bit_generator.state
        self.n_epochs = len(t.history)

    def restore(self):
        t = self.trainer
        np.copyto(t.network.params, self.params)
        np.copyto(t.state1, self.state1)
        np.copyto(t.state2, self.state2)
        t.steps = self.steps
        t.rng.bit_generator.state = self.rng_state
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            del getattr(t.history, name)[self.n_epochs:]


class FullBatchObjective:
    """``mean loss + l2/2 sum ||W||^2`` over all rows of (X, T, w) as one batch,
    evaluated at the network's current ``params`` by the compiled step
    (kernels.step.loss_gradient), for full-batch optimisers such as
    fastnn.lbfgs that evaluate it many times on the same data.

    X, T, w must already be checked (C-contiguous, the network's dtype, as
    :meth:`Trainer._check_data` makes them).  The workspace is made once here
    and reused by every call.
    """

    def __init__(self, network, X, T, w, l2):
        self.network = network
        self.X, self.T, self.w = X, T, w
        self.l2 = network.dtype.type(l2)
        self.work = make_workspace(network, X.shape[0], X.shape[1], T.shape[1])
        # the same threading rule as a training step of this many rows
        self.serial = serial_step(network, X.shape[0])

    def __call__(self):
        """(loss as a float, gradient): the gradient is the workspace's buffer,
        overwritten by the next call; copy it to keep it."""
        with parallel_region(self.serial):
            loss = loss_gradient(_net_bundle(self.network), self.X, self.T, self.w,
                                 self.work, self.l2, np.int64(numba.get_num_threads()))
        return float(loss), self.work.grad


def serial_step(network, rows):
    """Whether a step over ``rows`` rows runs on one thread (see SERIAL_STEP_FLOPS)."""
    n_weights = int((network._dims[:-1] * network._dims[1:]).sum())
    return rows < MIN_PARALLEL_ROWS or 6.0 * n_weights * rows < SERIAL_STEP_FLOPS


class Trainer:
    """Trains a :class:`~fastnn.Network` by mini-batch backpropagation.

    Parameters
    ----------
    network : Network
    optimizer : SGD or Adam (default SGD(lr=0.01))
    batch_size : int, rows per mini-batch (clipped to the number of samples)
    l2 : float, L2 penalty lambda: loss + lambda/2 sum ||W||^2 (weights only)
    shuffle : bool, reshuffle the rows every epoch
    seed : int or None, seed of the shuffling
    """

    def __init__(self, network, optimizer=None, batch_size=200, l2=0.0, shuffle=True, seed=None):
        self.network = network
        self.optimizer = SGD() if optimizer is None else optimizer
        self.batch_size = V.check_positive_int(batch_size, "batch_size")
        self.l2 = V.check_float(l2, "l2", low=0.0)
        self.shuffle = bool(shuffle)
        self.rng = np.random.default_rng(seed)
        self.state1 = np.zeros(network.n_params, dtype=network.dtype)
        self.state2 = np.zeros(network.n_params, dtype=network.dtype)
        self.steps = 0
        self.history = History()
        self.interrupted = False
        self._workspace = None

    def _get_workspace(self, batch_size, n_features, n_outputs):
        key = (batch_size, n_features, n_outputs)
        if self._workspace is None or self._workspace[0] != key:
            ws = make_workspace(self.network, batch_size, n_features, n_outputs)
            self._workspace = (key, ws)
        return self._workspace[1]

    def run_epoch(self, X, T, w, order=None):
        """One compiled pass over (X, T, w); returns (loss, accuracy, finite).

        ``order``: the rows in the order to train them (default: shuffled from
        the trainer's seed, or as they are with shuffle=False).  The batches
        are gathered from X inside the compiled step, so passing an order costs
        no copy of the data.
        """
        net = self.network
        dt = net.dtype.type
        n = X.shape[0]
        batch = min(self.batch_size, n)
        ws = self._get_workspace(batch, X.shape[1], T.shape[1])
        if order is None:
            order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        momentum, beta1, beta2, eps = self.optimizer.hyper()
        serial = serial_step(net, batch)
        update = Update(self.state1, self.state2, np.int64(self.optimizer.kind), dt(self.l2),
                        dt(self.optimizer.lr), dt(momentum), dt(beta1), dt(beta2), dt(eps), True)
        with parallel_region(serial):
            loss, weight, correct, steps, finite = train_epoch(
                _net_bundle(net), X, T, w, order.astype(np.int64), batch, ws, update,
                np.int64(self.steps), np.int64(numba.get_num_threads()))
        self.steps += int(steps)
        mean_loss = loss / weight if weight > 0 else float("nan")
        accuracy = correct / n if net.output != "linear" else None
        return mean_loss, accuracy, bool(finite)

    def loss_and_gradient(self, X, y, sample_weight=None):
        """The training objective on all rows of (X, y) as one batch, and its
        gradient with respect to ``network.params`` (a new flat array).

        The same compiled arithmetic as a training step, without the update.
        """
        X, T, w = self._check_data(X, y, sample_weight)
        loss, grad = FullBatchObjective(self.network, X, T, w, self.l2)()
        return loss, grad.copy()

    def _check_data(self, X, y, sample_weight):
        net = self.network
        X = net._check_X(X)
        T = make_targets(net, y)
        if T.shape[0] != X.shape[0]:
            raise ValueError(f"X and y have different numbers of samples: {X.shape[0]} "
                             f"and {T.shape[0]}")
        return X, T, self._sample_weight(sample_weight, X.shape[0])

    def evaluate(self, X, y):
        """(loss, accuracy) of the network on (X, y), without training.

        The loss is the training objective's data term in float64 (no L2).
        """
        net = self.network
        X = net._check_X(X, "X_val")
        T = make_targets(net, y, "y_val").astype(np.float64)
        out = net._forward_checked(X).astype(np.float64)
        if net.output == "softmax":
            loss = -np.mean(np.sum(T * np.log(np.maximum(out, 1e-300)), axis=1))
            acc = float(np.mean(out.argmax(1) == T.argmax(1)))
        elif net.output == "sigmoid":
            p = np.clip(out, 1e-300, 1 - 1e-16)
            loss = -np.mean(np.sum(T * np.log(p) + (1 - T) * np.log1p(-p), axis=1))
            acc = float(np.mean(np.all((out > 0.5) == (T > 0.5), axis=1)))
        else:
            loss = 0.5 * np.mean(np.sum((out - T) ** 2, axis=1))
            acc = None
        return float(loss), acc

    def fit(self, X, y, epochs=10, validation_data=None, sample_weight=None,
            callbacks=(), progress=False, checkpoint=None, checkpoint_every=1):
        """Train for ``epochs`` passes over (X, y); returns the :class:`History`.

        callbacks: functions ``cb(trainer, epoch, logs)`` called after each epoch
        with that epoch's logs (a dict); a callback returning True stops training.
        progress: show a tqdm progress bar (needs tqdm installed).
        checkpoint: a path; every ``checkpoint_every`` epochs the whole training
        state is written there atomically (resume with :meth:`Trainer.resume`).

        Failures never leave a half-trained epoch behind:

        * if the loss stops being finite, FloatingPointError is raised and the
          network keeps the parameters of the last finite step;
        * Ctrl-C (KeyboardInterrupt) stops training with a warning, and the
          network, optimizer state and history are those of the last
          completed epoch (``trainer.interrupted`` is then True).
        """
        epochs = V.check_positive_int(epochs, "epochs")
        checkpoint_every = V.check_positive_int(checkpoint_every, "checkpoint_every")
        X, T, w = self._check_data(X, y, sample_weight)
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            self.evaluate(*validation_data)  # validate it now, before any training
        bar = _progress_bar(epochs) if progress else None
        self.interrupted = False
        snapshot = _Snapshot(self)
        try:
            for _ in range(epochs):
                snapshot.take()
                try:
                    logs = self._train_one_epoch(X, T, w, validation_data, snapshot)
                except KeyboardInterrupt:
                    snapshot.restore()   # the epoch did not complete: undo it all
                    self._warn_interrupted()
                    break
                try:
                    if checkpoint is not None and len(self.history) % checkpoint_every == 0:
                        from .checkpoint import save_checkpoint
                        save_checkpoint(self, checkpoint)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()
                                         if v is not None})
                        bar.update(1)
                    if any(cb(self, len(self.history), logs) for cb in callbacks):
                        break
                except KeyboardInterrupt:  # the epoch itself is complete: keep it
                    self._warn_interrupted()
                    break
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _warn_interrupted(self):
        self.interrupted = True
        warnings.warn(f"training interrupted (KeyboardInterrupt); the network holds the "
                      f"state after epoch {len(self.history)}", RuntimeWarning, stacklevel=3)

    def _train_one_epoch(self, X, T, w, validation_data, snapshot):
        """One epoch, committed to the history only once everything succeeded."""
        loss, acc, finite = self.run_epoch(X, T, w)
        if not finite:
            if not np.isfinite(self.network.params).all():
                snapshot.restore()  # an update overflowed: back to the epoch's start
            raise FloatingPointError(
                f"the training loss became NaN or infinite in epoch "
                f"{len(self.history) + 1}; the network keeps the parameters of the "
                "last finite step. Lower the learning rate or scale the inputs.")
        logs = {"loss": loss, "accuracy": acc}
        if validation_data is not None:
            logs["val_loss"], logs["val_accuracy"] = self.evaluate(*validation_data)
        self._record(logs)
        return logs

    @classmethod
    def resume(cls, path):
        """A Trainer (with its network) restored from a checkpoint written by
        ``fit(checkpoint=path)``; continuing it gives the same bits as a run
        that was never interrupted."""
        from .checkpoint import load_checkpoint
        return load_checkpoint(path)

    def _record(self, logs):
        h = self.history
        h.loss.append(logs["loss"])
        h.accuracy.append(logs["accuracy"])
        if "val_loss" in logs:
            h.val_loss.append(logs["val_loss"])
            h.val_accuracy.append(logs["val_accuracy"])

    def _sample_weight(self, sample_weight, n):
        if sample_weight is None:
            return np.ones(n, dtype=self.network.dtype)
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "biuf" or w.shape != (n,):
            raise ValueError(f"sample_weight must be {n} numbers (one per sample); got "
                             f"shape {w.shape}, dtype {w.dtype}")
        w = np.ascontiguousarray(w, dtype=self.network.dtype)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample_weight must be finite, >= 0, and not all zero")
        return w


def _progress_bar(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(total=total, unit="epoch")


def train(network, X, y, epochs=10, optimizer=None, batch_size=200, l2=0.0, shuffle=True,
          seed=None, validation_data=None, sample_weight=None, callbacks=(), progress=False):
    """Train ``network`` on (X, y) in place and return the per-epoch History.

    A shortcut for ``Trainer(network, ...).fit(X, y, ...)``; see :class:`Trainer`.
    """
    trainer = Trainer(network, optimizer=optimizer, batch_size=batch_size, l2=l2,
                      shuffle=shuffle, seed=seed)
    return trainer.fit(X, y, epochs=epochs, validation_data=validation_data,
                       sample_weight=sample_weight, callbacks=callbacks, progress=progress)
