"""The order in which an epoch visits the rows.

The :class:`~fastnn.Trainer` asks its order for the rows of each epoch; the
compiled step gathers the batches in that order, so no data is copied.

* :class:`Shuffled`       a fresh permutation per epoch from a NumPy Generator
  (the Trainer's default, ``shuffle=True``).
* :class:`InOrder`        the rows as they are (``shuffle=False``).
* :class:`RunningShuffle` scikit-learn's: the previous epoch's order shuffled
  again with a ``RandomState`` (``sklearn.utils.shuffle`` on the already
  shuffled data), restarted from the identity at each fit call; the
  estimators use it so that a given ``random_state`` visits the rows in the
  same order as scikit-learn's MLP.

``next_many`` draws the orders of several epochs at once (a compiled chunk
of epochs); ``get_state`` / ``set_state`` capture everything that decides
later orders, cheaply, for rolling back an epoch; ``json_state`` is the same
for checkpoints.
"""
import ctypes

import numpy as np

from .kernels.shuffle import MT_WORDS, pcg64_permutations, running_shuffles

_WORD = 1 << 64


def _pcg64_words(state):
    """PCG64's ``bit_generator.state`` as the 6 uint64 of
    kernels.shuffle.pcg64_permutations."""
    s, inc = state["state"]["state"], state["state"]["inc"]
    return np.array([s >> 64, s % _WORD, inc >> 64, inc % _WORD, state["has_uint32"],
                     state["uinteger"]], dtype=np.uint64)


def _pcg64_state(words):
    """The ``bit_generator.state`` dict of :func:`_pcg64_words`'s array."""
    w = [int(v) for v in words]
    return {"bit_generator": "PCG64",
            "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": w[4], "uinteger": w[5]}


def next_orders(order, n, orders):
    """orders[e] = the next len(orders) epochs' orders from ``order`` (its
    ``next_many``, or ``next`` once per epoch for an order object of the
    caller's own that has only that)."""
    many = getattr(order, "next_many", None)
    if many is not None:
        many(n, orders)
        return
    for e in range(orders.shape[0]):
        orders[e] = order.next(n)


class Shuffled:
    """A new random permutation of the rows for every epoch."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def start(self, n):
        """A fit over ``n`` rows begins."""

    def next(self, n):
        """The row order of the next epoch (int64)."""
        orders = np.empty((1, n), dtype=np.int64)
        self.next_many(n, orders)
        return orders[0]

    def next_many(self, n, orders):
        """orders[e] = the order of each of the next len(orders) epochs, as
        ``rng.permutation(n)`` gives them: drawn in compiled code for NumPy's
        PCG64 (kernels.shuffle.pcg64_permutations, bit for bit, its state
        read and written through ``bit_generator.state``): 2.3 us an epoch of
        300 rows, where ``permutation`` from Python cost about 8 us of a 51
        us spiral epoch; other generators draw in Python."""
        if orders.shape[0] == 0:
            return
        bit_generator = self.rng.bit_generator
        state = bit_generator.state
        if state.get("bit_generator") != "PCG64" or orders.shape[1] != n:
            for e in range(orders.shape[0]):
                orders[e] = self.rng.permutation(n)
            return
        pcg = _pcg64_words(state)
        pcg64_permutations(pcg, orders)
        bit_generator.state = _pcg64_state(pcg)

    def get_state(self):
        """The generator's exact state."""
        return self.rng.bit_generator.state

    json_state = get_state

    def set_state(self, state):
        """Restore what :meth:`get_state` returned."""
        self.rng.bit_generator.state = state


class InOrder:
    """The rows in their given order, every epoch."""

    def start(self, n):
        """A fit over ``n`` rows begins."""
        self._order = np.arange(n, dtype=np.int64)

    def next(self, n):
        """The row order of the next epoch."""
        if self._order.shape[0] != n:
            self.start(n)
        return self._order

    def next_many(self, n, orders):
        """orders[e] = the order of each of the next len(orders) epochs."""
        orders[:] = self.next(n)

    def get_state(self):
        """No state."""
        return None

    json_state = get_state

    def set_state(self, state):
        """Nothing to restore."""


class RunningShuffle:
    """scikit-learn's epoch order: the running order shuffled with ``random_state``."""

    def __init__(self, random_state):
        self.rng = random_state
        self.order = np.arange(0, dtype=np.int64)
        self._scratch = np.empty(0, dtype=np.int64)
        self._state_view = self._state_of = None   # _raw_state

    def start(self, n):
        """A fit (or partial_fit) call over ``n`` rows begins from the identity."""
        self.order = np.arange(n, dtype=np.int64)

    def next(self, n):
        """Shuffle the running order once more, as scikit-learn does each epoch."""
        orders = np.empty((1, n), dtype=np.int64)
        self._draw(n, orders)
        self.order = orders[0]   # a new array: snapshots hold the old one
        return self.order

    def next_many(self, n, orders):
        """orders[e] = the running order after e + 1 more epochs, as len(orders)
        calls of :meth:`next` give it: drawn in compiled code on the
        generator's raw state (kernels.shuffle.running_shuffles, NumPy's
        shuffle bit for bit: 2.3 us an epoch of 300 rows, where the Python
        loop and its snapshots cost about 10 us of a 55 us spiral epoch)."""
        if orders.shape[0] == 0:
            return
        self._draw(n, orders)
        self.order = orders[-1].copy()   # a new array: snapshots hold the old one

    def _draw(self, n, orders):
        """orders[e] = the running order after e + 1 more epochs (self.order
        itself unchanged)."""
        if self.order.shape[0] != n or orders.shape[1] != n:   # start(n) comes first
            raise ValueError(f"the running order holds {self.order.shape[0]} rows, not {n}")
        state = self._raw_state()
        if state is None:
            order = self.order
            for e in range(orders.shape[0]):
                perm = np.arange(n)
                self.rng.shuffle(perm)
                order = order[perm]
                orders[e] = order
            return
        if self._scratch.shape[0] != n:
            self._scratch = np.empty(n, dtype=np.int64)
        running_shuffles(state, self.order, orders, self._scratch)

    def _raw_state(self):
        """The generator's raw Mersenne-Twister state as a live uint32 array
        (the key, then the position), or None where that is not known to
        work (epoch_order._raw_mt_state_works).  Made once per generator:
        reading the state through ``rng._bit_generator.ctypes`` builds ctypes
        objects each time, and copying it in and out cost about 8 us of a
        14 us spiral partial_fit epoch's order (with the snapshot's copy)."""
        if self._state_of is not self.rng:
            self._state_view = _live_mt_state(self.rng) if _raw_mt_state_works() else None
            self._state_of = self.rng
        return self._state_view

    def get_state(self):
        """The generator's state and the running order (the order array is
        replaced, never changed in place, so it is not copied).

        RandomState.get_state() costs 50-250 us (it builds Python objects
        from the 2.5 kB Mersenne-Twister state), more than a whole spiral
        epoch, and the loop takes a snapshot every epoch: the raw state is
        copied instead where that is known to round-trip (checked once).
        """
        state = self._raw_state()
        if state is not None:
            return {"raw": state.copy(), "order": self.order}
        return {"rng": self.rng.get_state(), "order": self.order}

    def __getstate__(self):
        # the live view points into this process's generator: rebuilt on use
        state = dict(self.__dict__)
        state["_state_view"] = state["_state_of"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_scratch" not in state:   # pickled by a version without these
            self._scratch = np.empty(0, dtype=np.int64)
            self._state_view = self._state_of = None

    def json_state(self):
        """The state as JSON-able values (checkpoints)."""
        kind, key, pos, has_gauss, gauss = self.rng.get_state()
        return {"rng": [kind, key.tolist(), int(pos), int(has_gauss), float(gauss)],
                "order": self.order.tolist()}

    def set_state(self, state):
        """Restore what :meth:`get_state` or :meth:`json_state` returned."""
        if "raw" in state:
            live = self._raw_state()
            live[:] = np.frombuffer(state["raw"], dtype=np.uint32)
        else:
            kind, key, pos, has_gauss, gauss = state["rng"]
            self.rng.set_state((kind, np.asarray(key, dtype=np.uint32), int(pos),
                                int(has_gauss), float(gauss)))
        self.order = np.asarray(state["order"], dtype=np.int64)


# NumPy's mt19937_state: uint32 key[624], then int pos.  Only shuffle() runs
# between a snapshot and its restore, so the Gaussian cache (kept outside this
# struct) never needs restoring.
_MT_STATE_BYTES = MT_WORDS * 4 + 4
_RAW_OK = []


def _raw_mt_state(rng):
    return ctypes.string_at(rng._bit_generator.ctypes.state_address, _MT_STATE_BYTES)


def _live_mt_state(rng):
    """The raw state of ``rng`` as a uint32 array over the generator's own
    memory (valid while ``rng`` lives: its holder keeps a reference)."""
    words = ctypes.c_uint32 * (_MT_STATE_BYTES // 4)
    return np.ctypeslib.as_array(words.from_address(rng._bit_generator.ctypes.state_address))


def _set_raw_mt_state(rng, raw):
    ctypes.memmove(rng._bit_generator.ctypes.state_address, raw, _MT_STATE_BYTES)


def _raw_mt_state_works():
    """True if copying the raw state bytes round-trips on this NumPy (checked
    once per process against the public get_state / shuffle)."""
    if not _RAW_OK:
        try:
            probe = np.random.RandomState(12345)
            raw = _raw_mt_state(probe)
            _, key, pos, _, _ = probe.get_state()
            same = (np.array_equal(np.frombuffer(raw[:2496], dtype=np.uint32), key)
                    and int.from_bytes(raw[2496:], "little", signed=True) == pos)
            first = np.arange(64)
            probe.shuffle(first)
            _set_raw_mt_state(probe, raw)
            again = np.arange(64)
            probe.shuffle(again)
            _RAW_OK.append(bool(same and np.array_equal(first, again)))
        except (AttributeError, TypeError, ValueError):
            _RAW_OK.append(False)
    return _RAW_OK[0]


# Raw states of freshly seeded generators, by seed (a few seeds per process;
# the dict is emptied rather than allowed to grow without bound).
_SEEDED_STATES = {}
_SEEDED_STATES_MAX = 256


def seeded_random_state(seed, recycle=None):
    """``np.random.RandomState(seed)`` for an int ``seed``, in the state a new
    one starts in.

    ``recycle``: a RandomState that nothing else holds any more, or None.  It
    is reset to that state by copying the seed's raw Mersenne-Twister state
    into it (about 2 us) rather than seeding a new generator (100-350 us
    measured here, a third of a one-epoch warm-start fit of the spiral).  The
    copy covers the key and position, not the Gaussian cache, so ``recycle``
    must be a generator that has only drawn uniform numbers and shuffles
    (the estimators' own), whose cache is empty.
    """
    seed = int(seed)
    raw = _SEEDED_STATES.get(seed)
    if recycle is None or not _raw_mt_state_works():
        rng = np.random.RandomState(seed)
        if raw is None and _raw_mt_state_works():
            if len(_SEEDED_STATES) >= _SEEDED_STATES_MAX:
                _SEEDED_STATES.clear()
            _SEEDED_STATES[seed] = _raw_mt_state(rng)
        return rng
    if raw is None:
        return seeded_random_state(seed)
    _set_raw_mt_state(recycle, raw)
    return recycle
