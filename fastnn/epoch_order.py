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

``get_state`` / ``set_state`` capture everything that decides later orders,
for rolling back an epoch and (converted to JSON) for checkpoints.
"""
import numpy as np


class Shuffled:
    """A new random permutation of the rows for every epoch."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def start(self, n):
        """A fit over ``n`` rows begins."""

    def next(self, n):
        """The row order of the next epoch (int64)."""
        return self.rng.permutation(n).astype(np.int64)

    def get_state(self):
        """The generator's exact state."""
        return self.rng.bit_generator.state

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

    def get_state(self):
        """No state."""
        return None

    def set_state(self, state):
        """Nothing to restore."""


class RunningShuffle:
    """scikit-learn's epoch order: the running order shuffled with ``random_state``."""

    def __init__(self, random_state):
        self.rng = random_state
        self.order = np.arange(0, dtype=np.int64)

    def start(self, n):
        """A fit (or partial_fit) call over ``n`` rows begins from the identity."""
        self.order = np.arange(n, dtype=np.int64)

    def next(self, n):
        """Shuffle the running order once more, as scikit-learn does each epoch."""
        perm = np.arange(n)
        self.rng.shuffle(perm)
        self.order = self.order[perm]
        return self.order

    def get_state(self):
        """The RandomState's state and the running order (cheap: the order
        array is replaced, never changed in place, so it is not copied)."""
        return {"rng": self.rng.get_state(), "order": self.order}

    def set_state(self, state):
        """Restore what :meth:`get_state` returned (or its JSON form)."""
        kind, key, pos, has_gauss, gauss = state["rng"]
        self.rng.set_state((kind, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss),
                            float(gauss)))
        self.order = np.asarray(state["order"], dtype=np.int64)
