"""Data-parallel training and prediction on a Dask cluster (``fastnn[dask]``).

The estimators branch here when X, y or sample_weight is a Dask collection
(README, "Training on a cluster").  Dask does the distribution (scheduler,
workers, data placement, recomputation of lost data); fastnn does the
arithmetic on each worker with its own compiled step.

How a fit runs:

* **Start** (the only time data moves): every row chunk of X (with its y and
  sample_weight) becomes a *shard* on the worker that holds it: the chunk
  checked as locally (the same errors) and converted to the network's dtype,
  as a Dask future with lineage (``_make_shard``).  One actor per worker
  (``_ShardActor``) then holds that worker's shards and a workspace per shard.
* **Epoch**: the trainer's epoch order (the same object a local fit uses)
  gives a permutation of the global rows; step s trains on positions
  s*B:(s+1)*B of it, as locally.  Each shard is sent the positions that fall
  in it (8 bytes a row, once per epoch) and returns its share of each step's
  summed sample weight.  Then every actor gets the parameters and the
  optimizer state (once per epoch) and the actors run all of the epoch's
  steps among themselves (``_ShardActor.run_epoch``): two driver round trips
  an epoch, none per step.
* **Step**: each shard computes the gradient of its rows of the step's batch
  with the compiled step (kernels.distributed.chunk_gradient), scaled by 1 /
  the *global* batch weight, so the shards' gradients add up to the batch's
  mean gradient; each actor sends its shards' gradients (and losses) to
  every other actor, directly, worker to worker; every actor adds all the
  shards' gradients in chunk order (never arrival order) and applies the
  same update with the local update code (apply_update) to its replica of
  the parameters and optimizer state: the same inputs in the same order, so
  the same bits on every worker.  Per step each worker sends its shards'
  gradients once to each other worker; nothing goes through the driver.  At
  the epoch's end one actor returns the parameters and optimizer state.
* **Faults**: a lost worker fails its actor's call; the driver calls the
  epoch off on the other actors (they stop waiting for the lost one), the
  shards it held are recomputed by Dask from their lineage, new actors are
  started on the workers that now hold them and the epoch is run again from
  the parameters and state it started from.  Its inputs are the same, so
  are its bits.

The result depends only on the data, its row chunking, the seed and the
hyperparameters: which worker holds which chunk, how many workers there are
and when their answers arrive change nothing.  With one chunk it is the local
fit's bits (tested).

The training loop is the Trainer's own (``Trainer._fit_checked``: epochs,
schedule, stopping rule, callbacks, Ctrl-C, rollback); :class:`ClusterData`
is plugged in as its ``run_epoch``, which the Trainer supports (the compiled
multi-epoch path is then off, as for any replaced ``run_epoch``).
"""
import asyncio
import contextlib
import contextvars
import functools
from collections import namedtuple
import math
import threading
import time

import numba
import numpy as np

from ._parallel import num_threads, parallel_region
from .kernels.distributed import add_step_loss, apply_update, chunk_gradient, step_weights
from .network import Network

EXTRA = 'pip install "fastnn[dask]"'

# Recoveries (new actors after a lost worker) allowed for one step before the
# fit gives up and raises the error.
MAX_RECOVERIES = 3
# Call the actors directly, not through the scheduler, during a fit (what
# Client(direct_to_workers=True) does; the client's setting is restored
# afterwards).  Through the scheduler every array crossed the loopback twice
# (measured: 4.29 MB on `lo` for a 2.14 MB argument) and the scheduler's
# process copied it.  Set False if the driver cannot reach the workers.
DIRECT_TO_WORKERS = True
# How long an actor waits for its peers' gradients of one step before it
# gives up (a peer that died is normally noticed by the driver first, which
# calls the epoch off at once).  Generous: a peer's first step may compile.
PEER_WAIT_SECONDS = 600.0

_CLIENT = contextvars.ContextVar("fastnn_dask_client", default=None)


# ------------------------------------------------------------ dask input
def _import_dask():
    """(dask, dask.array, distributed), or ImportError naming the extra."""
    try:
        import dask
        import dask.array as da
        import distributed
    except ImportError as exc:
        raise ImportError(f"fastnn got Dask input but cannot import dask and distributed "
                          f"({exc}); install the extra: {EXTRA}") from None
    return dask, da, distributed


@contextlib.contextmanager
def use_client(client):
    """Run the block's fits and predictions on ``client`` (a
    ``distributed.Client``) instead of the current default client."""
    token = _CLIENT.set(client)
    try:
        yield client
    finally:
        _CLIENT.reset(token)


def current_client():
    """The client of :func:`use_client`, else distributed's current one;
    ValueError when there is none."""
    client = _CLIENT.get()
    if client is not None:
        return client
    _, _, distributed = _import_dask()
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError("fastnn got Dask input but no Dask client is running: start one "
                         "(distributed.Client(...) or Client('scheduler-address:8786')) or "
                         "pass it with fastnn.distributed.use_client(client)") from None


def _as_dask_array(obj, name, da, rows=None):
    """A Dask collection or array-like as a dask.array with known row chunks;
    ``rows``: the row chunks to match (rechunked to them: y and weights are
    small next to X, and matching chunks make a shard's rows one unit)."""
    if hasattr(obj, "to_dask_array"):            # dask DataFrame / Series
        obj = obj.to_dask_array(lengths=True)
    elif not isinstance(obj, da.Array):
        arr = np.asarray(obj)
        if arr.ndim == 0:
            raise ValueError(f"{name} must be an array with one entry per sample; got a "
                             f"scalar {arr!r}")
        if rows is not None and arr.shape[0] != sum(rows):
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"[{sum(rows)}, {arr.shape[0]}] (X and {name})")
        obj = da.from_array(arr, chunks=(tuple(rows),) + arr.shape[1:] if rows else "auto")
    if any(math.isnan(c) for c in obj.chunks[0]):
        obj = obj.compute_chunk_sizes()
    if rows is not None:
        if obj.shape[0] != sum(rows):
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"[{sum(rows)}, {obj.shape[0]}] (X and {name})")
        if obj.chunks[0] != tuple(rows) or (obj.ndim == 2 and len(obj.chunks[1]) > 1):
            obj = obj.rechunk((tuple(rows),) + tuple(-1 for _ in obj.shape[1:]))
    return obj


# ------------------------------------------------------------ worker side
class _Shard:
    """One row chunk on its worker: X, T, w checked and in the network's dtype."""

    def __init__(self, index, X, T, w):
        self.index, self.X, self.T, self.w = index, X, T, w

    def __sizeof__(self):      # what Dask's memory accounting sees
        return self.X.nbytes + self.T.nbytes + self.w.nbytes


def _chunk_labels(y):
    """(labels, counts) of one chunk of 1-D classification labels."""
    return np.unique(np.asarray(y), return_counts=True)


def _make_shard(index, Xc, yc, wc, spec):
    """A chunk as a :class:`_Shard`, checked by the estimators' own functions
    (so a NaN found on a worker raises the local error) and converted to the
    network's dtype.  ``spec``: (estimator class, the fitted label attributes
    a classifier encodes against, dtype, per-class weights or None)."""
    from .estimators import _as_2d_float
    est_cls, fitted, dtype, class_weights = spec
    X = _as_2d_float(Xc, "X", dtype)
    n = X.shape[0]
    template = est_cls.__new__(est_cls)
    template.__dict__.update(fitted)
    # classifiers: encoded against the global classes (reuse); regressors as they are
    target = template._encode_targets(yc, n, dtype, bool(fitted), bool(fitted), None)
    w = np.ones(n) if wc is None else np.asarray(wc, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"sample_weight must be finite and >= 0, one per sample "
                         f"(chunk {index})")
    if class_weights is not None:
        w = w * class_weights[target["indices"]]
    w = np.ascontiguousarray(w, dtype=dtype)
    return _Shard(index, X, target["T"], w)


def _shard_weight(shard):
    """(rows, summed weight in float64) of a shard."""
    return shard.X.shape[0], float(shard.w.astype(np.float64).sum())


def peer_handles(peers, rank):
    """Handles to the actors ``peers`` (in rank order) for the actor of
    rank ``rank`` to call, None at its own place: rebuilt as unpickling
    does, so each is bound to the calling worker (with workers as threads of
    one process the driver's handle objects arrive as they are, shared, and
    one bound to another worker would take a call for a call on its own
    worker and return a coroutine, not a future)."""
    return [None if r == rank else rebuild(*args)
            for r, (rebuild, args) in enumerate(p.__reduce__() for p in peers)]


StepRecord = namedtuple("StepRecord", ["loss", "correct", "l2_loss", "compute_seconds",
                                       "peer_bytes", "wait_seconds", "update_seconds"])
"""One step of an actor's epoch: the batch's summed loss and correct rows,
its L2 loss (None: the loss was not finite and no update was applied), and
this actor's gradient time, bytes sent to its peers, wait for theirs and
sum + update time."""


class _Aborted(RuntimeError):
    """The driver called off this epoch (a peer was lost, or Ctrl-C)."""


class _ShardActor:
    """Long-lived state on one worker (a Dask actor): its shards, a workspace
    per shard, a replica of the network and of the optimizer state, the
    epoch's positions, and handles to the other workers' actors (its peers).
    Its methods are the only per-step work on a worker; during an epoch it
    talks to its peers directly, not through the driver.  One actor per
    worker (an actor calling another on its own worker would not get a
    future back)."""

    calls = 0     # shard gradients computed in this process (tests look at it)

    def __init__(self, net_state, batch_size, *shards):
        from .trainer import make_workspace
        self.net = Network.__new__(Network)
        self.net.__dict__.update(net_state)
        self.net.params = self.net.params.copy()
        self.shards = sorted(shards, key=lambda s: s.index)
        work = [make_workspace(self.net, min(batch_size, s.X.shape[0]), s.X.shape[1],
                               s.T.shape[1]) for s in self.shards]
        # two gradient buffers per shard, for even and odd steps: a peer may
        # still be reading step s's gradient (with workers as threads of one
        # process it receives the array itself, not a copy) while this actor
        # computes step s + 1; it has read it before this actor gets its
        # parts of s + 1, so before step s + 2 overwrites the buffer
        self.work = [(w, w._replace(grad=np.empty_like(w.grad))) for w in work]
        self.grad = np.empty_like(self.net.params)
        self.plans = {}
        self.peers = []
        self.n_shards = len(self.shards)
        # gradients received from peers, by (run, step): filled by receive()
        # on the worker's event loop, taken by run_epoch() on the actor's thread
        self.inbox = {}
        self.aborted = -1
        self.cond = threading.Condition()
        # the worker and this actor's key on it: a wait for peers ends when
        # the actor is released (its driver closed its client or died)
        self._worker, self._key = None, None
        try:
            from distributed import get_worker
            self._worker = get_worker()
            self._key = self._worker.get_current_task()
            self.threads = max(1, min(self._worker.state.nthreads,
                                      numba.config.NUMBA_NUM_THREADS))
        except (ImportError, ValueError, AttributeError):
            self.threads = 1

    def _released(self):
        """Whether the driver let go of this actor (it is no longer on its worker)."""
        return self._key is not None and self._key not in self._worker.state.actors

    def connect(self, rank, peers, n_shards):
        """This actor is number ``rank`` of ``peers`` (every actor of the
        fit, itself included, in rank order), which hold ``n_shards`` shards
        in all."""
        self.peers = peer_handles(peers, rank)
        self.rank, self.n_shards = rank, n_shards
        return rank

    def set_epoch(self, plans):
        """Store each shard's (rows, step offsets) of the epoch; returns
        {chunk: summed sample weight of its rows in each step}."""
        self.plans = plans
        return {s.index: step_weights(s.w, *plans[s.index]) for s in self.shards}

    async def receive(self, run, step, parts):
        """A peer's shard results of step ``step`` of epoch run ``run``
        (runs on the worker's event loop, so it is never queued behind
        run_epoch on the actor's thread)."""
        with self.cond:
            if run > self.aborted:
                self.inbox.setdefault((run, step), []).extend(parts)
                self.cond.notify_all()

    async def abort(self, run):
        """Call off epoch run ``run`` (and older ones): a run_epoch waiting
        for its peers raises instead."""
        with self.cond:
            self.aborted = max(self.aborted, run)
            self.inbox = {k: v for k, v in self.inbox.items() if k[0] > run}
            self.cond.notify_all()

    def _peer_parts(self, run, step, count):
        """The ``count`` shard results of step ``step`` sent by the peers."""
        deadline = time.monotonic() + PEER_WAIT_SECONDS
        with self.cond:
            while True:
                if run <= self.aborted:
                    raise _Aborted(f"epoch run {run} was called off")
                if self._released():
                    raise _Aborted("the driver released this actor")
                parts = self.inbox.get((run, step), ())
                if len(parts) == count:
                    return self.inbox.pop((run, step), [])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no gradients from the peers for step {step} in "
                                       f"{PEER_WAIT_SECONDS} s")
                self.cond.wait(min(left, 1.0))

    def _shard_gradients(self, step, scales):
        """[(chunk, summed loss, correct rows, gradient or None)] of step
        ``step`` for this actor's shards, and the seconds spent computing."""
        from .trainer import serial_step
        net = self.net._bundle()
        scale = self.net.dtype.type(scales[step])
        out = []
        t0 = time.perf_counter()
        for shard, works in zip(self.shards, self.work):
            work = works[step % 2]
            rows, offsets = self.plans[shard.index]
            mine = rows[offsets[step]:offsets[step + 1]]
            if mine.shape[0] == 0:
                out.append((shard.index, 0.0, 0, None))
                continue
            with parallel_region(serial_step(self.net, mine.shape[0])) as threads:
                loss, correct = chunk_gradient(net, shard.X, shard.T, shard.w, mine, scale,
                                               work, np.int64(threads))
            out.append((shard.index, float(loss), int(correct), work.grad))
            type(self).calls += 1
        return out, time.perf_counter() - t0

    def run_epoch(self, run, params, update, first_step, scales):
        """Every step of the epoch (positions from set_epoch) from ``params``
        and the optimizer state and settings ``update`` (kernels.step.Update;
        ``first_step`` steps taken before).  Per step: this actor's shard
        gradients, sent to every peer while it receives theirs; the batch's
        gradient summed over all shards in chunk order and one update
        applied, by every actor alike (the same inputs in the same order, so
        the same bits everywhere).  Stops before the update of a step whose
        loss is not finite.

        Returns ([StepRecord] per step taken, (params, state1, state2) from
        rank 0 and None from the others)."""
        np.copyto(self.net.params, params)      # received buffers may be read-only
        state1, state2 = update.state1.copy(), update.state2.copy()
        update = update._replace(state1=state1, state2=state2)
        bundle = self.net._bundle()
        others = self.n_shards - len(self.shards)
        records = []
        sends = []
        with num_threads(self.threads):
            for step in range(len(scales)):
                mine, seconds = self._shard_gradients(step, scales)
                # the last step's gradients were delivered (long since: a step
                # computed meanwhile), so step + 1 may overwrite their buffers
                for f in sends:
                    f.result()
                sends = [peer.receive(run, step, mine) for r, peer in enumerate(self.peers)
                         if r != self.rank]
                t0 = time.perf_counter()
                parts = sorted(mine + (self._peer_parts(run, step, others) if others else []),
                               key=lambda part: part[0])
                t1 = time.perf_counter()
                sent = len(sends) * sum(g.nbytes for _, _, _, g in mine if g is not None)
                batch_loss, correct, first = 0.0, 0, True
                for _, loss, hits, g in parts:                    # chunk order
                    batch_loss += loss
                    correct += hits
                    if g is None:
                        continue
                    if first:
                        np.copyto(self.grad, g)
                        first = False
                    else:
                        self.grad += g
                if not np.isfinite(batch_loss):
                    records.append(StepRecord(batch_loss, correct, None, seconds, sent,
                                              t1 - t0, 0.0))
                    break
                l2_loss = apply_update(bundle, self.grad, update, np.int64(first_step + step))
                records.append(StepRecord(batch_loss, correct, float(l2_loss), seconds, sent,
                                          t1 - t0, time.perf_counter() - t1))
            for f in sends:
                f.result()
        state = (self.net.params, state1, state2) if self.rank == 0 else None
        return records, state


# ------------------------------------------------------------ driver side
class ClusterData:
    """Training data living on a Dask cluster as shards, and the distributed
    epoch (plugged into a Trainer as its ``run_epoch``).

    ``shape`` is (rows, features) of the whole data, so the Trainer's loop
    can use an instance where it uses X.  ``stats`` counts what moved:
    ``steps``, ``epochs``, ``round_trips`` (driver-to-workers calls: two an
    epoch), ``actors`` (worker-side actors, one per worker holding shards,
    in the last epoch), ``bytes_out`` / ``bytes_in`` (array payloads the
    driver sent to and received from the workers: the parameters and
    optimizer state to every actor at each epoch's start, back from one at
    its end), ``peer_bytes`` (gradients the workers sent each other during
    the steps), ``epoch_bytes_out`` (positions sent at epoch starts),
    ``recoveries`` (actors rebuilt after a lost worker), ``epochs_redone``
    (epochs started again because a worker was lost during their steps),
    ``step_seconds`` (wall time of the epochs' steps, as the driver waited
    for them), ``slowest_seconds`` (per step, the gradient time of the
    slowest worker, summed over the steps: ``step_seconds -
    slowest_seconds`` is the overhead of distributing),
    ``peer_wait_seconds`` and ``update_seconds`` (per step, the longest
    wait of a worker for the others' gradients and the longest sum and
    update, summed) and ``compute_seconds`` (all workers' gradient time).
    """

    def __init__(self, client, shards, rows, n_features, n_outputs, weight_sum):
        self.client = client
        self.shards = shards            # futures, one per non-empty chunk, chunk order
        self.rows = np.asarray(rows, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), int(n_features))
        self.n_outputs = int(n_outputs)
        self.mean_weight = weight_sum / self.shape[0]
        self.actors = []
        self._actor_futures = []
        self._actor_key = None
        self._plans = None
        self._run = 0
        self.stats = dict(steps=0, epochs=0, round_trips=0, actors=0, bytes_out=0, bytes_in=0,
                          peer_bytes=0, peer_wait_seconds=0.0, update_seconds=0.0,
                          epoch_bytes_out=0, recoveries=0, epochs_redone=0,
                          step_seconds=0.0,
                          slowest_seconds=0.0, compute_seconds=0.0)

    # ---------------------------------------------------------- actors
    def _start_actors(self, network, batch_size):
        """One actor per worker holding shards, built on that worker from
        its shards (Dask first recomputes any that were lost), and told its
        peers."""
        # waits until every shard exists (Dask recomputes lost ones); small
        # results, and no call on the default client (use_client may differ)
        self.client.gather(self.client.map(_shard_weight, self.shards, pure=False))
        who = self.client.who_has(self.shards)
        by_worker = {}
        for c, fut in enumerate(self.shards):
            holders = sorted(who.get(fut.key, ()))
            if not holders:
                raise RuntimeError(f"shard {c} is held by no worker")
            by_worker.setdefault(holders[0], []).append(c)
        state = network.__getstate__()
        futures = [self.client.submit(_ShardActor, state, batch_size,
                                      *[self.shards[c] for c in chunks], actor=True,
                                      workers=[addr], allow_other_workers=True, pure=False)
                   for addr, chunks in sorted(by_worker.items())]
        actors = [f.result() for f in futures]
        self._wait([a.connect(rank, actors, len(self.shards)) for rank, a in enumerate(actors)])
        self.actors = actors
        self._actor_futures = futures
        self._actor_key = batch_size
        self._owned = [chunks for _, chunks in sorted(by_worker.items())]

    def _wait(self, futures):
        """The results of actor calls, in order; the first error is raised
        as soon as it arrives (the other calls may be waiting for a lost
        peer, so waiting on them in order could wait forever).  Waits on the
        client's event loop, without polling."""
        async def first_error():
            tasks = [asyncio.ensure_future(f) for f in futures]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise task.exception()
            return [task.result() for task in tasks]

        return self.client.sync(first_error)

    def _abort(self):
        """Call the current epoch run off on every actor still reachable."""
        for a in self.actors:
            try:
                a.abort(self._run)
            except Exception:       # its worker is gone: nothing waits there
                pass

    def _call(self, network, batch_size, method, make_args):
        """Call ``method`` on every actor (``make_args(chunks)`` gives its
        arguments) and return the results in actor order, restarting lost
        actors (and resending the epoch) up to MAX_RECOVERIES times."""
        for attempt in range(MAX_RECOVERIES + 1):
            try:
                if not self.actors or self._actor_key != batch_size:
                    self._start_actors(network, batch_size)
                    if method != "set_epoch" and self._plans is not None:
                        self._wait([a.set_epoch({c: self._plans[c] for c in chunks})
                                    for a, chunks in zip(self.actors, self._owned)])
                self.stats["round_trips"] += 1
                self._run += 1     # each attempt a new run: its stale messages are dropped
                return self._wait([getattr(a, method)(*make_args(chunks))
                                   for a, chunks in zip(self.actors, self._owned)])
            except (RuntimeError, OSError, TimeoutError) as exc:
                # a worker holding an actor was lost (RuntimeError "Worker
                # holding Actor was lost", a closed comm): the others are
                # told to stop waiting for it; rebuild and redo the call
                self._abort()
                if attempt == MAX_RECOVERIES or not _looks_lost(exc):
                    raise
                self.stats["recoveries"] += 1
                if method == "run_epoch":
                    self.stats["epochs_redone"] += 1
                self.actors = []
                time.sleep(0.2 * (attempt + 1))
            except BaseException:       # Ctrl-C: the actors stop too
                self._abort()
                raise

    def close(self):
        """Release the actors and shards (their memory on the workers)."""
        self.actors, self._actor_futures, self.shards = [], [], []

    # ---------------------------------------------------------- the epoch
    def plan_epoch(self, order, batch):
        """From the global epoch ``order``: per chunk, (the local indices of
        its rows in epoch order, offsets where each step's rows start in
        them), and the number of steps.  Step s trains on order[s*batch:
        (s+1)*batch], as a local epoch does."""
        n = order.shape[0]
        n_steps = -(-n // batch)
        chunk_of = np.searchsorted(self.starts, order, side="right") - 1
        by_chunk = np.argsort(chunk_of, kind="stable")     # positions, chunk by chunk
        bounds = np.searchsorted(chunk_of[by_chunk], np.arange(len(self.rows) + 1))
        step_starts = np.arange(n_steps + 1, dtype=np.int64) * batch
        plans = []
        for c in range(len(self.rows)):
            positions = by_chunk[bounds[c]:bounds[c + 1]]
            local = np.ascontiguousarray(order[positions] - self.starts[c], dtype=np.int64)
            offsets = np.searchsorted(positions, step_starts).astype(np.int64)
            plans.append((local, offsets))
        return plans, n_steps

    def run_epoch(self, trainer, X, T, w, order=None):
        """One distributed epoch for ``trainer`` (the Trainer.run_epoch
        contract: returns (mean loss, accuracy, finite) and advances
        trainer.steps); X, T, w are ignored (the data is on the cluster).

        Two round trips: the positions out (the shards' step weights back),
        then the parameters and optimizer state out to every actor, which
        run all the steps among themselves (_ShardActor.run_epoch), and the
        new parameters and state back from one of them.  A lost worker
        makes the epoch start again from the same state on new actors: the
        same bits."""
        net = trainer.network
        n = self.shape[0]
        if order is None:
            order = trainer.order.next(n)
        order = np.asarray(order, dtype=np.int64)
        batch = min(trainer.batch_size, n)
        self._plans, n_steps = self.plan_epoch(order, batch)
        self.stats["epoch_bytes_out"] += sum(r.nbytes + o.nbytes for r, o in self._plans)
        parts = self._call(net, batch, "set_epoch",
                           lambda chunks: ({c: self._plans[c] for c in chunks},))
        by_chunk = {}
        for part in parts:
            by_chunk.update(part)
        # the batch weight: shards' partial sums added in chunk order
        batch_weight = np.zeros(n_steps)
        for c in range(len(self.rows)):
            batch_weight += by_chunk[c]
        scales = np.array([net.dtype.type(1.0 / bw) for bw in batch_weight], dtype=net.dtype)
        update = trainer._update_bundle()
        t0 = time.perf_counter()

        results = self._call(net, batch, "run_epoch", lambda chunks: (
            self._run, net.params, update, np.int64(trainer.steps), scales))
        self.stats["step_seconds"] += time.perf_counter() - t0
        records = results[0][0]
        params, state1, state2 = results[0][1]
        for arr, new in ((net.params, params), (update.state1, state1), (update.state2, state2)):
            np.copyto(arr, new)
        state_bytes = net.params.nbytes + update.state1.nbytes + update.state2.nbytes
        self.stats["bytes_out"] += state_bytes * len(self.actors)
        self.stats["bytes_in"] += state_bytes
        self.stats["actors"] = len(self.actors)
        self.stats["epochs"] += 1
        for same_step in zip(*(actor_records for actor_records, _ in results)):
            seconds = [r.compute_seconds for r in same_step]
            self.stats["slowest_seconds"] += max(seconds)
            self.stats["compute_seconds"] += sum(seconds)
            self.stats["peer_bytes"] += sum(r.peer_bytes for r in same_step)
            self.stats["peer_wait_seconds"] += max(r.wait_seconds for r in same_step)
            self.stats["update_seconds"] += max(r.update_seconds for r in same_step)
        loss_total, weight_total, correct_total, steps = 0.0, 0.0, 0, 0
        for s, record in enumerate(records):
            correct_total += record.correct
            if record.l2_loss is None:   # not finite: stopped before this step's update
                trainer.steps += steps
                self.stats["steps"] += steps
                return loss_total / weight_total if weight_total else float("nan"), None, False
            steps += 1
            loss_total = add_step_loss(loss_total, record.loss, record.l2_loss, batch_weight[s])
            weight_total += batch_weight[s]
        trainer.steps += steps
        self.stats["steps"] += steps
        mean_loss = loss_total / weight_total if weight_total > 0 else float("nan")
        accuracy = correct_total / n if net.output != "linear" else None
        return mean_loss, accuracy, True

    @contextlib.contextmanager
    def plugged_into(self, trainer):
        """The block's epochs of ``trainer`` run on the cluster (the Trainer's
        documented hook: an instance ``run_epoch`` replaces the compiled one)."""
        trainer.run_epoch = functools.partial(self.run_epoch, trainer)
        has = hasattr(self.client, "direct_to_workers")   # None by default: "decide"
        direct = getattr(self.client, "direct_to_workers", None)
        if DIRECT_TO_WORKERS and has:
            self.client.direct_to_workers = True
        try:
            yield self
        finally:
            trainer.__dict__.pop("run_epoch", None)
            if has:
                self.client.direct_to_workers = direct


def _looks_lost(exc):
    """Whether an error from an actor call means its worker is gone."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return "lost" in str(exc).lower() or "closed" in str(exc).lower()


# ------------------------------------------------------------ estimators
def prepare(est, X, y, sample_weight, dtype, reuse, incremental, classes):
    """Check (X, y, sample_weight) on the cluster and make their shards.

    Returns (ClusterData, target) where target is the dict the estimators'
    ``_encode_targets`` returns, without ``T`` (it lives in the shards).
    Errors are those of a local fit, raised before the estimator changes.
    """
    dask, da, _ = _import_dask()
    client = current_client()
    if X is None:
        raise ValueError("X is None; expected a 2-D array-like of numbers")
    X = _as_dask_array(X, "X", da)
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D array for X, got {X.ndim}-D with shape {X.shape}.")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"Found array with 0 samples or features (shape={X.shape}).")
    if len(X.chunks[1]) > 1:     # one chunk of columns: a shard holds whole rows
        X = X.rechunk({1: -1})
    rows = X.chunks[0]
    y = _as_dask_array(y, "y", da, rows)
    w = None if sample_weight is None else _as_dask_array(sample_weight, "sample_weight",
                                                          da, rows)
    if w is not None and w.ndim != 1:
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({X.shape[0]},)")
    keep = [c for c, r in enumerate(rows) if r > 0]   # empty chunks hold no shard
    Xb = X.to_delayed().ravel()
    yb = y.to_delayed().ravel()
    wb = [None] * len(rows) if w is None else list(w.to_delayed().ravel())
    from .estimators import MLPClassifier
    is_classifier = isinstance(est, MLPClassifier)
    class_weights = None
    counts = None
    if is_classifier and y.ndim == 1:
        parts = client.compute([dask.delayed(_chunk_labels)(yb[c]) for c in keep])
        parts = client.gather(parts)
        labels = np.unique(np.concatenate([p[0] for p in parts]))
        counts = np.zeros(len(labels), dtype=np.float64)
        for lab, cnt in parts:
            counts[np.searchsorted(labels, lab)] += cnt
        target = est._encode_targets(labels, len(labels), dtype, reuse, incremental, classes)
    else:
        probe = np.zeros((1,) + y.shape[1:], dtype=y.dtype if y.dtype.kind in "biuf"
                         else np.float64)
        target = est._encode_targets(probe, 1, dtype, reuse, incremental, classes)
    fitted = {}
    if is_classifier:
        fitted = {"classes_": target["fitted"]["classes_"], "_kind": target["kind"]}
        class_weights = _class_weights(est, target, counts, incremental)
    spec = (type(est), fitted, dtype, class_weights)
    # shards are numbered 0.. in chunk order, empty chunks left out
    shards = client.compute([dask.delayed(_make_shard, pure=True)(i, Xb[c], yb[c], wb[c], spec)
                             for i, c in enumerate(keep)])
    sizes = client.gather(client.map(_shard_weight, shards, pure=False))   # raises bad input
    weight_sum = sum(s for _, s in sizes)
    if not weight_sum > 0:
        raise ValueError("sample_weight must not be all zero")
    n_outputs = target["T"].shape[1] if target.get("T") is not None else None
    data = ClusterData(client, shards, [r for r, _ in sizes], X.shape[1], n_outputs,
                       weight_sum)
    target = dict(target, T=None)
    return data, target


def _class_weights(est, target, counts, incremental):
    """Per-class weights (indexed by class) for class_weight, or None."""
    cw = est.class_weight
    if cw is None:
        return None
    if isinstance(cw, str) and cw == "balanced":
        if incremental:
            raise ValueError("class_weight='balanced' needs the whole data set; pass a "
                             "dict to partial_fit")
        if counts is None:
            raise ValueError("class_weight is not supported for multi-label y")
        # scikit-learn's 'balanced' (as estimators._apply_class_weight)
        return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    k = len(target["fitted"]["classes_"])
    return est._apply_class_weight(None, dict(target, indices=np.arange(k)), incremental)


def fit(est, X, y, sample_weight, p, incremental, classes):
    """``est.fit`` / ``partial_fit`` on Dask input (see the module notes)."""
    if est.solver == "lbfgs":
        raise ValueError("solver='lbfgs' is not supported on Dask input; use 'adam' or 'sgd'")
    if est.early_stopping and not incremental:
        raise ValueError("early_stopping is not supported on Dask input yet; hold out a "
                         "validation set yourself")
    if est.checkpoint is not None and not incremental:
        raise ValueError("checkpoint is not supported on Dask input")
    names = None
    if hasattr(X, "columns"):
        from .estimators import _feature_names
        names = _feature_names(X)
    reuse = hasattr(est, "_network") and (incremental or bool(est.warm_start))
    if reuse and est._network.dtype != p["dtype"]:
        raise ValueError(f"dtype changed from {est._network.dtype.name} to "
                         f"{p['dtype'].name}; refit without warm_start")
    data, target = prepare(est, X, y, sample_weight, p["dtype"], reuse, incremental, classes)
    if reuse and data.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {data.shape[1]} features, but {type(est).__name__} is "
                         f"expecting {est.n_features_in_} features as input.")
    try:
        trainer, rng = est._train(data, target, None, p, reuse, incremental, source=data)
    finally:
        data.close()
    est._commit(trainer, rng, target, names)
    est.cluster_stats_ = dict(data.stats)   # what this call moved (ClusterData.stats)
    return est


# ------------------------------------------------------------ prediction
def _predict_block(block, model, method):
    import warnings
    with warnings.catch_warnings():
        # the feature names were checked on the driver; a block is a bare array
        warnings.filterwarnings("ignore", "X does not have valid feature names")
        return getattr(model, method)(block)


def predict(est, X, method):
    """``est.<method>(X)`` for a Dask X: a lazy Dask array, one task per row
    chunk on the workers (map_blocks); the model travels once, as one key."""
    dask, da, _ = _import_dask()
    est._check_fitted()
    from .estimators import _feature_names
    names, fitted = _feature_names(X), getattr(est, "feature_names_in_", None)
    if names is not None and fitted is not None and not np.array_equal(names, fitted):
        raise ValueError("The feature names should match those that were passed during fit.")
    if hasattr(X, "to_dask_array"):
        X = X.to_dask_array(lengths=True)
    elif not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask array or dataframe here; got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D array for X, got {X.ndim}-D with shape {X.shape}.")
    if X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is "
                         f"expecting {est.n_features_in_} features as input.")
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    model = _light_copy(est)
    # the output of a one-row call gives the dtype and columns; run here, on the driver
    sample = _predict_block(np.zeros((1, X.shape[1]), dtype=model._network.dtype), model,
                            method)
    meta = np.empty((0,) + sample.shape[1:], dtype=sample.dtype)
    model_d = dask.delayed(model, pure=True)
    if sample.ndim == 1:
        return X.map_blocks(_predict_block, model_d, method, drop_axis=1, dtype=sample.dtype,
                            meta=meta, chunks=(X.chunks[0],))
    return X.map_blocks(_predict_block, model_d, method, dtype=sample.dtype, meta=meta,
                        chunks=(X.chunks[0], (sample.shape[1],)))


def _light_copy(est):
    """The estimator without its trainer (optimizer state, history): what
    prediction needs, shipped to the workers."""
    import copy
    model = copy.copy(est)
    model._trainer = None
    model.callbacks = None
    return model


def score(est, X, y, sample_weight=None):
    """``est.score`` on Dask input: accuracy (classifier) or R^2 (regressor),
    reduced on the workers; returns a float."""
    _, da, _ = _import_dask()
    pred = predict(est, X, "predict")
    rows = pred.chunks[0]
    y = _as_dask_array(y, "y", da, rows)
    w = None if sample_weight is None else _as_dask_array(sample_weight, "sample_weight",
                                                          da, rows).astype(np.float64)
    from .estimators import MLPClassifier
    if not isinstance(est, MLPClassifier):   # a regressor: R^2
        from ._metrics import r2_from_sums
        n = y.shape[0]
        yy = y.astype(np.float64).reshape((n, -1))
        pp = pred.astype(np.float64).reshape((n, -1))
        ww = da.ones(n, chunks=(rows,)) if w is None else w
        mean = (ww[:, None] * yy).sum(axis=0) / ww.sum()
        ss_res = (ww[:, None] * (yy - pp) ** 2).sum(axis=0)
        ss_tot = (ww[:, None] * (yy - mean) ** 2).sum(axis=0)
        client = current_client()
        ss_res, ss_tot = client.gather(client.compute([ss_res, ss_tot]))
        return r2_from_sums(ss_res, ss_tot)
    hit = pred == y
    if hit.ndim == 2:
        hit = hit.all(axis=1)
    hit = hit.astype(np.float64)
    value = hit.mean() if w is None else (hit * w).sum() / w.sum()
    client = current_client()
    return float(client.gather(client.compute(value)))
