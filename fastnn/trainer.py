"""The thin Python training loop: epochs, shuffling, validation, history.

All per-sample and per-batch work happens in one compiled call per epoch
(kernels.step.train_epoch); Python only shuffles, records and reports.
"""
import contextlib
import math
import inspect
import signal
import threading

# the C module under `signal`: its wrapper converts handlers to and from enums,
# 20 us per call here, paid twice per fit (a small partial_fit is ~300 us)
try:
    import _signal
except ImportError:  # pragma: no cover - other Python implementations
    _signal = signal
import warnings

import numba
import numpy as np

from . import _compile_notice
from . import _validation as V
from . import sparse as _sparse
from ._metrics import r2_score
from ._parallel import parallel_region
from .checkpoint import read_checkpoint, save_checkpoint
from .epoch_order import InOrder, Shuffled, next_orders
from .io import ModelFileError
from .kernels.microkernel import lanes
from .kernels.step import (LOSS_GROUP_ROWS, MAX_BLOCK_ROWS, Update, Work, delta_pack_layout,
                           loss_gradient, no_keep, pack_workspace_elements, train_epoch,
                           weight_block_count)
from .optimizers import SGD
from .kernels import optim as optim_k
from .kernels import run as run_kernels
from .schedules import Adaptive, Constant, InvScaling, Plateau

# A batch of under MIN_PARALLEL_ROWS rows, or of fewer FLOPs than this
# (about 6 per weight per row), trains on one thread: waking the second thread for each of its parallel
# regions cost more than it gave (measured on 2 cores: spiral 2-100-3, batch
# 300, 0.9 MFLOP per step: 2.19 M samples/s on 1 thread, 1.27 M on 2;
# tiny_batch 784-128-10, batch 16 (one shard): 47 k vs 35 k; mnist 784-256-10,
# batch 128, 156 MFLOP: 52 k vs 80 k).
SERIAL_STEP_FLOPS = 20e6
MIN_PARALLEL_ROWS = 32
# Epochs per compiled call of the fast path: about CHUNK_FLOPS of arithmetic
# (6 per weight and row: some 10-30 ms here), so that Python (Ctrl-C, periodic
# callbacks, the progress bar, the history) is visited every few tens of
# milliseconds, and at most CHUNK_ROWS row visits, so the chunk's orders
# (8 bytes a row) stay small.
CHUNK_FLOPS = 2e9
CHUNK_ROWS = 1 << 18


class History:
    """Per-epoch record: loss and accuracy on the training rows (averaged over
    the epoch's mini-batches as they were trained), and on validation data when
    given (``val_score``: accuracy, or R^2 for a linear output).  Accuracy
    entries are None for regression."""

    FIELDS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_score")
    _LOG_KEYS = {"val_score": "validation_score"}

    def __init__(self):
        for name in self.FIELDS:
            setattr(self, name, [])

    def record(self, logs):
        """Append one epoch's logs."""
        for name in self.FIELDS:
            key = self._LOG_KEYS.get(name, name)
            if key in logs:
                getattr(self, name).append(logs[key])

    def truncate(self, n_epochs):
        """Forget every epoch after the first ``n_epochs``."""
        for name in self.FIELDS:
            del getattr(self, name)[n_epochs:]

    def as_dict(self):
        """The history as a dict of lists."""
        return {name: list(getattr(self, name)) for name in self.FIELDS}

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
    dpack, dpack_off = delta_pack_layout(network._dims, batch_size, dt)
    return Work(
        # W^T of every layer but the first, for the backward product
        WT=np.empty(network.n_params, dtype=dt),
        # activations a_l and deltas of the whole batch, layer l at act_off[l]
        act_ws=act_ws,
        act_off=network._activation_offsets(batch_size),
        delta_ws=np.empty_like(act_ws),
        grad=np.empty(network.n_params, dtype=dt),
        # per thread: one block of dW in the weights pass, and one of dW^T
        # for a layer of few outputs (see kernels.step.weight_gradient_rows)
        scratch=np.empty((numba.config.NUMBA_NUM_THREADS,
                          2 * MAX_BLOCK_ROWS * int(widths.max())), dtype=dt),
        # per thread: what the GEMM packs its operands into (no product allocates)
        pack=np.empty((numba.config.NUMBA_NUM_THREADS,
                       pack_workspace_elements(network._dims, dt.itemsize)), dtype=dt),
        Xb=np.empty((batch_size, n_features), dtype=dt),
        Tb=np.empty((batch_size, n_outputs), dtype=dt),
        wb=np.empty(batch_size, dtype=dt),
        group_loss=np.empty(groups, dtype=np.float64),
        group_correct=np.empty(groups, dtype=np.int64),
        l2_parts=np.empty(weight_block_count(network._dims, lanes(dt.itemsize)),
                          dtype=np.float64),
        # the batch's deltas packed for the weights pass's products
        dpack=dpack, dpack_off=dpack_off)


class _Snapshot:
    """The trainer's state at one moment, to roll back to: parameters, the
    optimizer buffers its update rule writes (into buffers allocated once per
    trainer), the step and sample counters, the history's length, the epoch
    order's state, the stopping rule's count and the learning rate.

    A buffer the rule at ``take`` does not write is left alone (``saved``
    counts the buffers copied); before anything writes it -- a rule that does,
    switched to later (``Trainer._update_bundle``), or a reset -- the trainer
    calls :meth:`cover`, which copies it then: still as it was at ``take``,
    since nothing has written it in between.

    ``take(defer=True)`` copies no array: the first training step keeps the
    values it overwrites, block by block (kernels.step.keep_range, through
    Trainer.run_epoch), and the compiled step marks ``kept`` once it has.
    Until then (``pending``) nothing has been written, so :meth:`settle`
    copies the arrays in Python when something else is about to write them
    or a restore needs them.  The mark is written by the same compiled call
    that keeps the values, so a KeyboardInterrupt between two Python lines
    never sees one without the other.

    A buffer that was *fresh* at ``take`` (Trainer.reset_optimizer: zero in
    meaning, its old values not yet overwritten) needs no copy: restoring
    marks it fresh again, whatever it holds by then."""

    def __init__(self, trainer):
        self.trainer = trainer
        # rows: params, state1, state2 (one array: the compiled step's ``keep``)
        self.arrays = np.empty((3, trainer.network.n_params), dtype=trainer.network.dtype)
        self.params, self.state1, self.state2 = self.arrays
        self.kept = np.zeros(1, dtype=np.int64)
        self.kept_kind = None   # the update rule of the step that kept them
        self.pending = False
        self.saved = None    # buffers copied since the last take (None: never taken)

    def take(self, defer=False):
        """Record the trainer's state now (the arrays by the first step, with ``defer``)."""
        t = self.trainer
        self.fresh = tuple(t._fresh)
        self.pending = bool(defer)
        self.kept[0] = 0
        if not defer:
            np.copyto(self.params, t.network.params)
            self.saved = 0
            self.cover(t.optimizer.kind)
        self.counters = (t.steps, t.samples_seen, len(t.history), t.optimizer, t.optimizer.lr)
        self.order = (t.order, t.order.get_state())
        self.stopping = (t.stopping, None if t.stopping is None else t.stopping.get_state())
        return self

    def cover(self, kind):
        """Copy, if not yet saved, the optimizer buffers that update rule
        ``kind`` (a kernels.optim code) writes; call it before they are written."""
        self.settle()
        if self.saved is None:
            return
        t = self.trainer
        # only those: plain and momentum SGD roll back without copying buffers
        # they never touch (on mnist shapes 0.8 MB each, 35-60 us a copy)
        need = optim_k.STATE_BUFFERS_WRITTEN[kind]
        for i in range(self.saved, need):
            if not self.fresh[i]:
                np.copyto(self.arrays[1 + i], t._states[i])
        self.saved = max(self.saved, need)

    def settle(self):
        """Make a deferred snapshot's arrays whole: kept by the first step, or
        copied now (nothing has written them yet)."""
        if not self.pending:
            return
        self.pending = False
        if self.kept[0]:
            self.saved = optim_k.STATE_BUFFERS_WRITTEN[self.kept_kind]
        else:
            np.copyto(self.params, self.trainer.network.params)
            self.saved = 0
            self.cover(self.trainer.optimizer.kind)

    def keeps_now(self):
        """True when the next step should keep this snapshot's arrays (it is
        deferred and no step has kept them yet)."""
        return self.pending and not self.kept[0]

    def restore(self):
        """Put the recorded state back."""
        self.settle()
        t = self.trainer
        np.copyto(t.network.params, self.params)
        for i in range(self.saved):   # the others are unwritten since take: as they were
            if not self.fresh[i]:
                np.copyto(t._states[i], self.arrays[1 + i])
        t._fresh[:] = self.fresh
        t.steps, t.samples_seen, n_epochs, t.optimizer, t.optimizer.lr = self.counters
        t.history.truncate(n_epochs)
        t.order, state = self.order
        t.order.set_state(state)
        t.stopping, state = self.stopping
        if state is not None:
            t.stopping.set_state(state)


class _Interrupts:
    """Ctrl-C during training: the first press asks the loop to stop after the
    epoch that is running (nothing is lost or rolled back); a second press
    raises KeyboardInterrupt at once (the running epoch is then rolled back).
    Only the main thread receives signals; elsewhere this does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = _signal.signal(signal.SIGINT, self._handle)
            except ValueError:    # e.g. an embedded interpreter without signals
                self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            _signal.signal(signal.SIGINT, self._previous)
        return False


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
        self.work = make_workspace(network, X.shape[0], _sparse.batch_matrix_columns(X),
                                   T.shape[1])
        # the same threading rule as a training step of this many rows
        self.serial = serial_step(network, X.shape[0])

    def __call__(self):
        """(loss as a float, gradient): the gradient is the workspace's buffer,
        overwritten by the next call; copy it to keep it."""
        with parallel_region(self.serial) as threads:
            if _sparse.is_sparse(self.X):
                return float(_sparse.loss_gradient(self, np.int64(threads))), self.work.grad
            loss = loss_gradient(self.network._bundle(), self.X, self.T, self.w,
                                 self.work, self.l2, np.int64(threads))
        return float(loss), self.work.grad


def _input_error(X):
    """The ValueError for training rows X holding NaN or infinity, or None.

    Training checks X in its step, as each batch is gathered (kernels.step.
    gather_rows): a batch holding such a row makes the epoch stop before its
    update, and this names the input (sparse X was checked when read, a
    cluster's rows on its workers: fastnn.distributed)."""
    if isinstance(X, np.ndarray) and not np.isfinite(X).all():
        return V.non_finite_error("Input X", X.dtype)
    return None


def unit_weights(n, dtype):
    """A weight of 1 for each of ``n`` rows, in ``dtype``: one array per
    (n, dtype), made once and shared (the compiled steps only read it; a
    new one each call was about 3 us of a 105 us spiral partial_fit call)."""
    key = (n, np.dtype(dtype))
    w = _UNIT_WEIGHTS.get(key)
    if w is None:
        if len(_UNIT_WEIGHTS) >= 16:
            _UNIT_WEIGHTS.clear()
        w = _UNIT_WEIGHTS[key] = np.ones(n, dtype=dtype)
    return w


_UNIT_WEIGHTS = {}


def serial_step(network, rows):
    """Whether a step over ``rows`` rows runs on one thread (see SERIAL_STEP_FLOPS)."""
    return rows < MIN_PARALLEL_ROWS or 6.0 * network.n_weights * rows < SERIAL_STEP_FLOPS


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
    schedule : learning-rate schedule applied after each epoch
        (fastnn.schedules: Constant (default), InvScaling, Adaptive)
    stopping : stopping rule (fastnn.schedules.Plateau) or None (run every epoch)

    ``trainer.order`` (fastnn.epoch_order) decides the rows' order in each epoch.
    """

    def __init__(self, network, optimizer=None, batch_size=200, l2=0.0, shuffle=True, seed=None,
                 schedule=None, stopping=None):
        self.network = network
        self.optimizer = SGD() if optimizer is None else optimizer
        self.batch_size = V.check_positive_int(batch_size, "batch_size")
        self.l2 = V.check_float(l2, "l2", low=0.0)
        self.shuffle = bool(shuffle)
        self.order = Shuffled(seed) if self.shuffle else InOrder()
        self.schedule = Constant() if schedule is None else schedule
        self.stopping = stopping
        # the optimizer's buffers (state1, state2) and which of them are fresh:
        # reset to zero in meaning but still holding their old values
        self._states = (np.zeros(network.n_params, dtype=network.dtype),
                        np.zeros(network.n_params, dtype=network.dtype))
        self._fresh = [False, False]
        self.steps = 0
        self.samples_seen = 0
        self.history = History()
        self.interrupted = False
        self.stop_reason = None
        self.epochs_run = 0
        self._workspace = None
        self._snapshot_buffers = None
        self._entry_snapshot = None
        self._last_update = None   # (settings, keep, states, Update): _update_bundle

    def __getstate__(self):
        self._settle_fresh(0)
        self._settle_fresh(1)
        state = dict(self.__dict__)
        # scratch buffers, rebuilt on demand: not part of the trainer's state
        state.update(_workspace=None, _snapshot_buffers=None, _entry_snapshot=None,
                     _last_update=None)
        state.pop("_sparse_work", None)
        return state

    def __setstate__(self, state):
        if "state1" in state:   # pickled before the buffers became a pair
            state["_states"] = (state.pop("state1"), state.pop("state2"))
        state.setdefault("_fresh", [False, False])
        state.setdefault("_last_update", None)
        self.__dict__.update(state)

    @property
    def state1(self):
        """The optimizer's first buffer (momentum's velocity, Adam's first moment)."""
        self._settle_fresh(0)
        return self._states[0]

    @property
    def state2(self):
        """The optimizer's second buffer (Adam's second moment)."""
        self._settle_fresh(1)
        return self._states[1]

    def _settle_fresh(self, i):
        """Zero optimizer buffer ``i`` if it is fresh (reset_optimizer), after
        the snapshots that need its old values have copied them."""
        if self._fresh[i]:
            self._cover_snapshots(optim_k.MOMENTUM if i == 0 else optim_k.ADAM)
            self._states[i][:] = 0
            self._fresh[i] = False

    @property
    def rng(self):
        """The generator of the shuffling (``shuffle=True``)."""
        return self.order.rng

    def reset_optimizer(self, optimizer):
        """Start ``optimizer`` afresh: zero state, step count 0 (a new fit of
        the same network, as scikit-learn's warm_start does).

        Nothing is written here: the buffers become *fresh*, and the first
        step of a transaction zeroes those its rule uses as it keeps their
        old values (kernels.step.keep_range), block by block in cache;
        otherwise they are zeroed in Python before the next step or read
        (_settle_fresh).  On a wide network's one-epoch warm-start fit, a
        copy and a zeroing of both buffers cost about 5 ms of an 80 ms call."""
        self.optimizer = optimizer
        self._fresh = [True, True]
        self.steps = 0

    def _get_workspace(self, batch_size, n_features, n_outputs):
        """(workspace, serial?) of steps over ``batch_size`` rows, made once
        for that shape (the serial_step rule kept beside it)."""
        key = (batch_size, n_features, n_outputs)
        if self._workspace is None or self._workspace[0] != key:
            ws = make_workspace(self.network, batch_size, n_features, n_outputs)
            self._workspace = (key, ws, serial_step(self.network, batch_size))
        return self._workspace[1:]

    def run_epoch(self, X, T, w, order=None):
        """One compiled pass over (X, T, w); returns (loss, accuracy, finite).

        ``order``: the rows in the order to train them (default: the next
        order of ``self.order``).  The batches
        are gathered from X inside the compiled step, so passing an order costs
        no copy of the data.
        """
        net = self.network
        n = X.shape[0]
        if order is None:
            order = self.order.next(n)
        batch, ws, update, serial = self._epoch_args(X, T, self._keeping_snapshot(X))
        order = np.ascontiguousarray(order, dtype=np.int64)
        with parallel_region(serial) as threads:
            if _sparse.is_sparse(X):   # the sparse first layer (fastnn.sparse)
                loss, weight, correct, steps, finite = _sparse.train_epoch(
                    self, X, T, w, order, batch, ws, update, np.int64(threads))
            else:
                loss, weight, correct, steps, finite = train_epoch(
                    net._bundle(), X, T, w, order, batch, ws, update, np.int64(self.steps),
                    np.int64(threads))
        self._after_update(update)
        self.steps += int(steps)
        mean_loss = loss / weight if weight > 0 else float("nan")
        accuracy = correct / n if net.output != "linear" else None
        return mean_loss, accuracy, bool(finite)

    def _keeping_snapshot(self, X):
        """The deferred snapshot (the transaction's, or the running epoch's or
        chunk's rollback point) whose arrays the next compiled call's first
        step is to keep (kernels.step.keep_range), or None.  Any other
        snapshot still deferred is copied before that call writes
        (_cover_snapshots)."""
        if self._snapshot_buffers is None or _sparse.is_sparse(X):
            return None
        for snapshot in self._snapshot_buffers:
            if snapshot.keeps_now():
                return snapshot
        return None

    def _after_update(self, update):
        """After a compiled call with ``update``: the buffers its first step
        zeroed (zero_state) are no longer fresh, if that step ran."""
        if update.zero_state and update.kept[0]:
            need = optim_k.STATE_BUFFERS_WRITTEN[int(update.kind)]
            self._fresh[:need] = [False] * need

    def _epoch_args(self, X, T, keep=None):
        """(batch size, workspace, Update bundle, serial?) of an epoch over X."""
        batch = min(self.batch_size, X.shape[0])
        ws, serial = self._get_workspace(batch, _sparse.batch_matrix_columns(X), T.shape[1])
        return batch, ws, self._update_bundle(keep), serial

    def _update_bundle(self, keep=None):
        """The optimizer's state and settings as the compiled update takes
        them (kernels.step.Update), in the network's dtype.  ``keep``: a
        deferred snapshot whose arrays the first step of the call is to keep."""
        momentum, beta1, beta2, eps = self.optimizer.hyper()
        kind = self.optimizer.kind
        need = optim_k.STATE_BUFFERS_WRITTEN[kind]
        # a reset optimizer's buffers: zeroed by the first step as it keeps
        # them, or else here
        zero_state = keep is not None and need > 0 and all(self._fresh[:need])
        if not zero_state:
            for i in range(need):
                self._settle_fresh(i)
        self._cover_snapshots(kind, keeping=keep)   # the update writes its buffers
        if keep is not None:
            keep.kept_kind = kind
        # the bundle of the call before when nothing in it changed (building
        # it, 14 fields and six dtype conversions, was about 4 us of a 105 us
        # spiral partial_fit call); the compiled step writes only into its
        # arrays, which are the same arrays
        settings = (kind, self.l2, self.optimizer.lr, momentum, beta1, beta2, eps, zero_state,
                    self.network.dtype)
        last = self._last_update
        if (last is not None and last[0] == settings and last[1] is keep
                and last[2] is self._states):
            return last[3]
        dt = self.network.dtype.type
        arrays, kept = no_keep(self.network.dtype) if keep is None else (keep.arrays, keep.kept)
        update = Update(self._states[0], self._states[1], np.int64(kind), dt(self.l2),
                        dt(self.optimizer.lr), dt(momentum), dt(beta1), dt(beta2), dt(eps), True,
                        arrays, kept, keep is not None, zero_state)
        self._last_update = (settings, keep, self._states, update)
        return update

    def loss_and_gradient(self, X, y, sample_weight=None):
        """The training objective on all rows of (X, y) as one batch, and its
        gradient with respect to ``network.params`` (a new flat array).

        The same compiled arithmetic as a training step, without the update.
        """
        X, T, w = self._check_data(X, y, sample_weight)
        loss, grad = FullBatchObjective(self.network, X, T, w, self.l2)()
        return loss, grad.copy()

    def _check_data(self, X, y, sample_weight, finite=True):
        net = self.network
        X = net._check_X(X, finite=finite)
        T = make_targets(net, y)
        if T.shape[0] != X.shape[0]:
            raise ValueError(f"X and y have different numbers of samples: {X.shape[0]} "
                             f"and {T.shape[0]}")
        return X, T, self._sample_weight(sample_weight, X.shape[0])

    def evaluate(self, X, y, sample_weight=None):
        """(loss, accuracy) of the network on (X, y), without training.

        The loss is the training objective's data term in float64 (no L2);
        accuracy is None for a linear output.
        """
        net = self.network
        X = net._check_X(X, "X_val")
        T = make_targets(net, y, "y_val")
        w = None if sample_weight is None else self._sample_weight(sample_weight, X.shape[0])
        loss, acc, _ = self._evaluate(X, T, w)
        return loss, acc

    def _evaluate(self, X, T, w):
        """(loss, accuracy, score) on checked data; score is the accuracy, or
        R^2 for a linear output (scikit-learn's ``score``), weighted by w."""
        net = self.network
        out = net._forward_checked(X)
        out64 = out.astype(np.float64)
        T64 = T.astype(np.float64)
        if net.output == "softmax":
            row_loss = -np.sum(T64 * np.log(np.maximum(out64, 1e-300)), axis=1)
            hit = out.argmax(1) == T.argmax(1)
        elif net.output == "sigmoid":
            p = np.clip(out64, 1e-300, 1 - 1e-16)
            row_loss = -np.sum(T64 * np.log(p) + (1 - T64) * np.log1p(-p), axis=1)
            hit = np.all((out > 0.5) == (T > 0.5), axis=1)
        else:
            row_loss = 0.5 * np.sum((out64 - T64) ** 2, axis=1)
            hit = None
        loss = float(np.average(row_loss, weights=w))
        if hit is None:
            return loss, None, r2_score(T, out, w)
        acc = float(np.average(hit, weights=w))
        return loss, acc, acc

    @contextlib.contextmanager
    def transaction(self, defer=False):
        """Everything in the block or nothing: if it raises, the trainer (its
        network's parameters, optimizer state and settings, history, counters,
        epoch order and stopping rule) is put back as it was at entry.

        The estimators train inside one, so a failed ``fit`` or ``partial_fit``
        leaves the model exactly as it was.  The snapshot taken at entry is
        also the rollback point of the block's first epoch, so a one-epoch
        call copies the parameters once.  With ``defer`` it is not even
        copied: the block's first training step keeps what it overwrites
        (_Snapshot); any other writer of the arrays copies them first.
        """
        settings = (self.batch_size, self.l2, self.optimizer, dict(self.optimizer.__dict__),
                    self.schedule, self.stopping, self.order, self.epochs_run,
                    self.stop_reason, self.interrupted)
        snapshot = self._snapshots()[0].take(defer=defer)
        self._entry_snapshot = snapshot
        try:
            yield self
        except BaseException:
            (self.batch_size, self.l2, self.optimizer, saved_optimizer, self.schedule,
             self.stopping, self.order, self.epochs_run, self.stop_reason,
             self.interrupted) = settings
            self.optimizer.__dict__.update(saved_optimizer)
            snapshot.restore()
            raise
        finally:
            self._entry_snapshot = None
            snapshot.pending = False   # done with: nothing may settle it later

    def _cover_snapshots(self, kind, keeping=None):
        """Before the optimizer buffers that rule ``kind`` writes are written:
        let the snapshots taken copy those they have not (_Snapshot.cover),
        but for ``keeping``, whose arrays the step about to run keeps."""
        if self._snapshot_buffers is not None:
            for snapshot in self._snapshot_buffers:
                if snapshot is not keeping:
                    snapshot.cover(kind)

    def _snapshots(self):
        """(entry snapshot, epoch snapshot) buffers, allocated once."""
        if self._snapshot_buffers is None:
            self._snapshot_buffers = (_Snapshot(self), _Snapshot(self))
        return self._snapshot_buffers

    def fit(self, X, y, epochs=10, validation_data=None, sample_weight=None,
            callbacks=(), progress=False, checkpoint=None, checkpoint_every=1):
        """Train for up to ``epochs`` passes over (X, y); returns the :class:`History`.

        validation_data: (X_val, y_val) or (X_val, y_val, sample_weight_val),
        scored after every epoch (``val_loss``, ``val_accuracy`` and
        ``validation_score``: accuracy, or R^2 for a linear output).
        callbacks: functions ``cb(logs)`` called after each epoch with a dict:
        ``epoch``, ``loss``, ``accuracy`` (None for regression),
        ``learning_rate`` (the rate the epoch trained with), the validation
        entries when there is validation data, ``network`` and ``trainer``.
        A callback returning True stops training.
        progress: a tqdm progress bar when tqdm is installed, else a line per
        epoch.
        checkpoint: a path; every ``checkpoint_every`` epochs the whole training
        state is written there atomically (resume with :meth:`Trainer.resume`).

        Between epochs the trainer's ``schedule`` sets the learning rate and
        its ``stopping`` rule (if any) may end training; ``stop_reason`` then
        says why ("plateau", "callback", "interrupted"; None when all epochs
        ran) and ``epochs_run`` how many epochs this call trained.

        Failures never leave a half-trained epoch behind:

        * if the loss stops being finite, FloatingPointError is raised and the
          network keeps the parameters of the last finite step;
        * Ctrl-C stops training after the running epoch with a warning
          (``trainer.interrupted`` is then True); a second Ctrl-C, or a
          KeyboardInterrupt raised inside an epoch, rolls that epoch back.  If
          no epoch of this call completed, the KeyboardInterrupt propagates.
        """
        epochs = V.check_positive_int(epochs, "epochs")
        if progress:   # a cold numba cache: say why the first epoch takes seconds
            _compile_notice.enable()
        # NaN and inf in X: found by the step as it gathers each row (kernels.step.
        # gather_rows, _input_error), not by a pass of its own over X here
        X, T, w = self._check_data(X, y, sample_weight, finite=False)
        val = self._check_validation(validation_data)
        return self._fit_checked(X, T, w, epochs, val, callbacks, progress, checkpoint,
                                 checkpoint_every)

    def _check_validation(self, validation_data):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or a triple "
                             "(X_val, y_val, sample_weight_val)")
        X_val, y_val = validation_data[:2]
        X_val = self.network._check_X(X_val, "X_val")
        T_val = make_targets(self.network, y_val, "y_val")
        if T_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"X_val and y_val have different numbers of samples: "
                             f"{X_val.shape[0]} and {T_val.shape[0]}")
        w_val = None
        if len(validation_data) == 3 and validation_data[2] is not None:
            w_val = self._sample_weight(validation_data[2], X_val.shape[0])
        return X_val, T_val, w_val

    def _fit_checked(self, X, T, w, epochs, val, callbacks=(), progress=False,
                     checkpoint=None, checkpoint_every=1, owner=None, restart_order=True):
        """The training loop, on checked data: the one loop of fastnn (the
        estimators call it too).  ``val`` is (X_val, T_val, w_val) or None;
        ``owner`` is stored in checkpoints; ``restart_order=False`` continues
        the epoch order where a checkpoint left it."""
        callbacks = _check_callbacks(callbacks)
        checkpoint_every = V.check_positive_int(checkpoint_every, "checkpoint_every")
        if checkpoint is not None:   # written like a periodic callback, after the others
            callbacks = (*callbacks, _CheckpointWriter(checkpoint, checkpoint_every, owner))
        if self.stopping is not None and self.stopping.monitor == "val_score" and val is None:
            raise ValueError("a stopping rule on 'val_score' needs validation_data")
        entry, epoch_snapshot = self._snapshots()
        restore_best = self.stopping is not None and self.stopping.restore_best
        if restore_best:
            best_params = self.network.params.copy()
        self.interrupted = False
        self.stop_reason = None
        self.epochs_run = 0
        if restart_order:
            self.order.start(X.shape[0])
        bar = _progress_bar(epochs) if progress else None
        # one epoch: the plain call is cheaper (and needs no chunk size)
        if (epochs > 1 and self._chunk_epochs(X.shape[0], epochs) > 1
                and all(hasattr(cb, "every") for cb in callbacks) and val is None
                and not _sparse.is_sparse(X)   # sparse: epoch by epoch (no chunked kernel)
                and self._compiled_runs_apply()):
            try:
                return self._fit_compiled(X, T, w, epochs, entry, epoch_snapshot,
                                          callbacks, bar)
            finally:
                if bar is not None:
                    bar.close()
        try:
            with _Interrupts() as interrupts:
                for _ in range(epochs):
                    # In a transaction the entry snapshot serves as the first epoch's
                    # rollback point (no second copy).  Settings changed since entry
                    # are undone with it, which is right: a first epoch that fails
                    # always propagates, and the transaction restores everything.
                    snapshot = entry if (self.epochs_run == 0 and self._entry_snapshot is entry) \
                        else epoch_snapshot.take(defer=True)
                    try:
                        logs, improved = self._train_one_epoch(X, T, w, val, snapshot)
                    except KeyboardInterrupt:
                        snapshot.restore()   # the epoch did not complete: undo it all
                        if self.epochs_run == 0:
                            raise
                        self._warn_interrupted()
                        break
                    self.epochs_run += 1
                    if restore_best and improved:
                        np.copyto(best_params, self.network.params)
                    reason = self._after_epoch(logs, callbacks, bar, checkpoint,
                                               checkpoint_every)
                    if reason is None and interrupts.requested:
                        self._warn_interrupted()
                        reason = "interrupted"
                    if reason is not None:
                        self.stop_reason = reason
                        break
        except KeyboardInterrupt:
            if self.epochs_run == 0:
                raise
            self._warn_interrupted()   # Ctrl-C between epochs: the epochs done stay
            self.stop_reason = "interrupted"
        finally:
            if bar is not None:
                bar.close()
        if restore_best and self.history.val_score:
            np.copyto(self.network.params, best_params)
        return self.history

    def _compiled_runs_apply(self):
        """True when the stopping rule and schedule can run inside the compiled
        loop (kernels.run), and run_epoch is this class's own (not replaced,
        e.g. by a test or a subclass that needs Python around every epoch)."""
        return (getattr(self.run_epoch, "__func__", None) is _OWN_RUN_EPOCH
                and type(self.schedule) in (Constant, InvScaling, Adaptive)
                and (self.stopping is None or (type(self.stopping) is Plateau
                                               and self.stopping.monitor == "loss")))

    def _chunk_epochs(self, n, epochs):
        """Epochs per compiled chunk over n rows (see CHUNK_FLOPS)."""
        sizes = self.network.sizes
        n_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        rows = min(CHUNK_ROWS, CHUNK_FLOPS / (6.0 * n_weights))
        return max(1, min(epochs, int(rows) // n))

    def _fit_compiled(self, X, T, w, epochs, entry, epoch_snapshot, callbacks, bar):
        """The loop when nothing needs Python between epochs: chunks of epochs,
        each one compiled call (kernels.run.train_epochs) with the schedule and
        stopping rule inside, the same bits as epoch by epoch.  Python is
        visited once per chunk (about CHUNK_ROWS row visits) for Ctrl-C and the
        history.  A chunk that goes non-finite is replayed epoch by epoch from
        its start, which raises as the epoch path does.  Periodic callbacks
        (:func:`every`) end chunks at their epochs; the progress bar is
        brought up to date after each chunk."""
        n = X.shape[0]
        chunk = self._chunk_epochs(n, epochs)
        orders = np.empty((chunk, n), dtype=np.int64)
        results = np.empty((3, chunk), dtype=np.float64)
        try:
            with _Interrupts() as interrupts:
                while self.epochs_run < epochs:
                    snapshot = entry if (self.epochs_run == 0 and self._entry_snapshot is entry) \
                        else epoch_snapshot.take(defer=True)
                    # end the chunk at the next epoch a periodic callback is due
                    done_so_far = len(self.history)
                    size = min([chunk, epochs - self.epochs_run,
                                *[cb.every - done_so_far % cb.every for cb in callbacks]])
                    first = len(self.history)
                    try:
                        done, reason = self._train_chunk(X, T, w, orders[:size], results)
                    except KeyboardInterrupt:
                        snapshot.restore()   # the chunk did not complete: undo it all
                        if self.epochs_run == 0:
                            raise
                        self._warn_interrupted()
                        self.stop_reason = "interrupted"
                        break
                    if reason == run_kernels.DIVERGED:
                        snapshot.restore()
                        bad_input = _input_error(X)
                        if bad_input is not None:
                            raise bad_input
                        if snapshot is entry:   # a transaction's first chunk: all of it
                            raise FloatingPointError(   # is undone anyway, no replay
                                "the training loss became NaN or infinite; the network "
                                "keeps the parameters of the last finite step (here: "
                                "those before this call). Lower the learning rate or "
                                "scale the inputs.")
                        self._replay_and_raise(X, T, w, done)
                    self.epochs_run += done
                    if self._after_chunk(first, results[2], callbacks, bar):
                        self.stop_reason = "callback"
                        break
                    if reason == run_kernels.STOPPED:
                        self.stop_reason = "plateau"
                        break
                    if interrupts.requested:
                        self._warn_interrupted()
                        self.stop_reason = "interrupted"
                        break
        except KeyboardInterrupt:
            if self.epochs_run == 0:
                raise
            self._warn_interrupted()
            self.stop_reason = "interrupted"
        return self.history

    def _after_chunk(self, first, rates, callbacks, bar):
        """Progress for the chunk's epochs (history entries from ``first``) and
        the periodic callbacks due at its last epoch; True if one says stop."""
        h = self.history
        last = len(h)
        if last == first:
            return False
        logs = None
        for e in range(first, last):
            logs = {"epoch": e + 1, "loss": h.loss[e], "accuracy": h.accuracy[e],
                    "learning_rate": float(rates[e - first])}
            if bar is not None:
                bar.update(logs)
        logs.update(network=self.network, trainer=self)
        due = [cb for cb in callbacks if last % cb.every == 0]
        return any([bool(cb(logs)) for cb in due])

    def _train_chunk(self, X, T, w, orders, results):
        """One compiled call of up to len(orders) epochs; records the
        completed ones and returns (epochs completed, reason)."""
        n = X.shape[0]
        start = self.order.get_state()
        next_orders(self.order, n, orders)   # the orders the epoch path would draw
        net = self.network
        batch, ws, update, serial = self._epoch_args(X, T, self._keeping_snapshot(X))
        schedule, stopping = self.schedule, self.stopping
        plan = run_kernels.Plan(
            np.int64(run_kernels.SCHEDULES[type(schedule).__name__]),
            float(getattr(schedule, "lr0", 0.0)), float(getattr(schedule, "power_t", 0.0)),
            float(getattr(schedule, "factor", 1.0)), float(getattr(schedule, "min_lr", 0.0)),
            stopping is not None, float(stopping.tol) if stopping else 0.0,
            np.int64(stopping.patience if stopping else 0))
        state = run_kernels.State(float(self.optimizer.lr), np.int64(self.samples_seen),
                                  float(stopping.best) if stopping else 0.0,
                                  np.int64(stopping.count if stopping else 0),
                                  np.int64(self.steps))
        with parallel_region(serial) as threads:
            done, state, reason = run_kernels.train_epochs(
                net._bundle(), run_kernels.Data(X, T, w), orders, batch, ws, update, plan,
                state, np.int64(threads), results)
        self._after_update(update)
        losses, accuracies = results[0], results[1]
        if reason == run_kernels.DIVERGED:
            return done, reason   # replayed by the caller from the chunk's start
        if done < orders.shape[0]:   # orders drawn but not trained: undrawn
            self.order.set_state(start)
            next_orders(self.order, n, orders[:done])
        self.optimizer.lr = float(state.lr)
        self.samples_seen = int(state.samples_seen)
        self.steps = int(state.steps)
        if stopping is not None:
            stopping.best, stopping.count = float(state.best), int(state.count)
        classify = net.output != "linear"
        for e in range(done):
            self.history.record({"loss": float(losses[e]),
                                 "accuracy": float(accuracies[e]) if classify else None})
        return done, reason

    def _replay_and_raise(self, X, T, w, done):
        """Train the ``done`` good epochs of a chunk epoch by epoch (the same
        bits), then the one that went non-finite, which raises."""
        for _ in range(done + 1):
            self._train_one_epoch(X, T, w, None, self._snapshots()[1].take())
            self.epochs_run += 1
            self.schedule.after_epoch(self.optimizer, self.samples_seen)
            if self.stopping is not None and self.stopping.exhausted:
                if self.schedule.on_plateau(self.optimizer):
                    self.stopping.count = 0
        raise AssertionError("a chunk that went non-finite trained finitely when replayed")

    def _after_epoch(self, logs, callbacks, bar, checkpoint, checkpoint_every):
        """Schedule, progress, callbacks (the checkpoint writer among them) and
        the stopping rule after an epoch; returns the reason to stop, or None."""
        self.schedule.after_epoch(self.optimizer, self.samples_seen)
        if bar is not None:
            bar.update(logs)
        due = [cb for cb in callbacks if len(self.history) % getattr(cb, "every", 1) == 0]
        if any([bool(cb(logs)) for cb in due]):
            return "callback"
        if self.stopping is not None and self.stopping.exhausted:
            if self.schedule.on_plateau(self.optimizer):
                self.stopping.count = 0
            else:
                return "plateau"
        return None

    def _warn_interrupted(self):
        self.interrupted = True
        warnings.warn(f"training interrupted (KeyboardInterrupt); the network holds the "
                      f"state after epoch {len(self.history)}", UserWarning, stacklevel=4)

    def _train_one_epoch(self, X, T, w, val, snapshot):
        """One epoch, committed to the history only once everything succeeded;
        returns its logs and whether the stopping rule saw an improvement."""
        lr = self.optimizer.lr
        loss, acc, finite = self.run_epoch(X, T, w, self.order.next(X.shape[0]))
        # an update that overflowed makes the loss NaN too (kernels.step.update_rows)
        if not finite or not math.isfinite(loss):
            bad_input = _input_error(X)
            if bad_input is not None:   # the epoch stopped at the batch holding it
                snapshot.restore()
                raise bad_input
            if not np.isfinite(self.network.params).all():
                snapshot.restore()  # an update overflowed: back to the epoch's start
            raise FloatingPointError(
                f"the training loss became NaN or infinite in epoch "
                f"{len(self.history) + 1}; the network keeps the parameters of the "
                "last finite step. Lower the learning rate or scale the inputs.")
        self.samples_seen += X.shape[0]
        logs = {"epoch": len(self.history) + 1, "loss": loss, "accuracy": acc,
                "learning_rate": lr}
        if val is not None:
            logs["val_loss"], logs["val_accuracy"], logs["validation_score"] = \
                self._evaluate(*val)
        improved = self.stopping.update(logs) if self.stopping is not None else False
        self.history.record(logs)
        logs["network"] = self.network
        logs["trainer"] = self
        return logs, improved

    @classmethod
    def resume(cls, path):
        """A Trainer (with its network) restored from a checkpoint written by
        ``fit(checkpoint=path)``; continuing it gives the same bits as a run
        that was never interrupted."""
        return cls._resume(path)[0]

    @classmethod
    def _resume(cls, path):
        """(trainer, owner dict or None) from a checkpoint."""
        net, arrays, parts = read_checkpoint(path)
        try:
            trainer = cls(net, optimizer=parts["optimizer"], batch_size=parts["batch_size"],
                          l2=parts["l2"], schedule=parts["schedule"],
                          stopping=parts.get("stopping"))
            trainer.order = parts["order"]
            trainer.shuffle = not isinstance(trainer.order, InOrder)
            trainer.steps = int(parts["steps"])
            trainer.samples_seen = int(parts["samples_seen"])
            for name, values in parts["history"].items():
                getattr(trainer.history, name).extend(values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"{path}: checkpoint header is incomplete or invalid "
                                 f"({type(exc).__name__}: {exc})") from None
        trainer.state1[:] = arrays["state1"]
        trainer.state2[:] = arrays["state2"]
        return trainer, parts.get("owner")

    def _sample_weight(self, sample_weight, n):
        if sample_weight is None:
            return unit_weights(n, self.network.dtype)
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "biuf" or w.shape != (n,):
            raise ValueError(f"sample_weight must be {n} numbers (one per sample); got "
                             f"shape {w.shape}, dtype {w.dtype}")
        w = np.ascontiguousarray(w, dtype=self.network.dtype)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample_weight must be finite, >= 0, and not all zero")
        return w


_OWN_RUN_EPOCH = Trainer.run_epoch


class every:
    """``every(k, cb)``: the callback ``cb(logs)`` called after the epochs
    whose number (``logs["epoch"]``) is a multiple of k, instead of after each.  Training
    in between needs no Python, so it runs as compiled chunks of epochs (the
    same bits); use it for reports and checks that need not see each epoch."""

    def __init__(self, k, callback):
        self.every = V.check_positive_int(k, "k")
        if not callable(callback):
            raise TypeError(f"callback must be a function cb(logs); got {callback!r}")
        self.callback = callback

    def __call__(self, logs):
        return self.callback(logs)



class _CheckpointWriter:
    """The checkpoint as a periodic callback: the training state after every
    k-th epoch, written atomically (fastnn.checkpoint)."""

    def __init__(self, path, k, owner):
        self.path, self.every, self.owner = path, k, owner

    def __call__(self, logs):
        save_checkpoint(logs["trainer"], self.path, self.owner)
        return False


def _check_callbacks(callbacks):
    """The callbacks as a tuple of one-argument functions ``cb(logs)``."""
    cbs = () if callbacks is None else (callbacks,) if callable(callbacks) else tuple(callbacks)
    for cb in cbs:
        if not callable(cb):
            raise TypeError(f"callbacks must be functions cb(logs) -> bool; got {cb!r}")
        try:
            inspect.signature(cb).bind({})
        except TypeError:
            raise TypeError(f"callback {getattr(cb, '__name__', cb)!r} must take one "
                            "argument, the epoch's logs dict (cb(logs) -> bool; the network "
                            "and trainer are logs['network'] and logs['trainer'])") from None
        except ValueError:   # no signature available (some builtins): trust it
            pass
    return cbs


class _EpochLines:
    """Progress without tqdm: scikit-learn's line per epoch on stdout."""

    def update(self, logs):
        print(f"Iteration {logs['epoch']}, loss = {logs['loss']:.8f}", flush=True)

    def close(self):
        pass


class _EpochBar:
    """A tqdm progress bar over the epochs, the latest loss beside it."""

    def __init__(self, tqdm, total):
        self.bar = tqdm(total=total, unit="epoch")

    def update(self, logs):
        self.bar.set_postfix({k: f"{logs[k]:.4f}" for k in
                              ("loss", "accuracy", "val_loss", "validation_score")
                              if logs.get(k) is not None})
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _progress_bar(total):
    """A tqdm bar when tqdm is installed (the ``progress`` extra), else lines."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _EpochLines()
    return _EpochBar(tqdm, total)


def train(network, X, y, epochs=10, optimizer=None, batch_size=200, l2=0.0, shuffle=True,
          seed=None, validation_data=None, sample_weight=None, callbacks=(), progress=False):
    """Train ``network`` on (X, y) in place and return the per-epoch History.

    A shortcut for ``Trainer(network, ...).fit(X, y, ...)``; see :class:`Trainer`.
    """
    trainer = Trainer(network, optimizer=optimizer, batch_size=batch_size, l2=l2,
                      shuffle=shuffle, seed=seed)
    return trainer.fit(X, y, epochs=epochs, validation_data=validation_data,
                       sample_weight=sample_weight, callbacks=callbacks, progress=progress)
