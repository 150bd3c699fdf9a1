"""scikit-learn's epoch order, drawn in compiled code: NumPy's legacy
``RandomState.shuffle`` on a Mersenne Twister state, bit for bit.

The estimators visit the rows in scikit-learn's order: each epoch the
running order is shuffled again with the fit's ``RandomState``
(epoch_order.RunningShuffle).  Drawn in Python, that cost about 10 us an
epoch (an ``arange``, ``RandomState.shuffle``, a fancy index and a snapshot
of the generator), a sixth of a 2-100-3 spiral epoch.  Here a compiled chunk's
orders are drawn in one call on a copy of the generator's raw state (the
MT19937 key and position, epoch_order._raw_mt_state), which is then written
back: the same orders and the same final state as the Python loop.

The arithmetic is NumPy's (numpy/random/src/mt19937, distributions.c):

* MT19937 (Matsumoto and Nishimura): 624 32-bit words regenerated as a block
  when the position reaches 624, each output word tempered;
* ``random_interval(max)``: the smallest all-ones mask covering ``max``,
  32-bit outputs masked until one is at most ``max`` (rejection, no bias);
* the shuffle: for i = n-1 down to 1, swap element i with element
  random_interval(i).
"""
import numpy as np

from .._jit import jit

MT_WORDS = 624          # the key; element 624 of a state array holds the position
_MT_M = 397
_MATRIX_A = np.uint32(0x9908B0DF)
_UPPER = np.uint32(0x80000000)
_LOWER = np.uint32(0x7FFFFFFF)


@jit(inline="always")
def _twist(upper_word, lower_word, far_word):
    y = (upper_word & _UPPER) | (lower_word & _LOWER)
    mag = _MATRIX_A if (y & np.uint32(1)) != 0 else np.uint32(0)
    return far_word ^ (y >> np.uint32(1)) ^ mag


@jit
def _regenerate(state):
    """The next 624 words of the key (mt19937_gen); position back to 0."""
    n, m = MT_WORDS, _MT_M
    for i in range(n - m):
        state[i] = _twist(state[i], state[i + 1], state[i + m])
    for i in range(n - m, n - 1):
        state[i] = _twist(state[i], state[i + 1], state[i + m - n])
    state[n - 1] = _twist(state[n - 1], state[0], state[m - 1])
    state[n] = 0


@jit(inline="always")
def next_uint32(state):
    """The next tempered 32-bit output (mt19937_next32)."""
    if state[MT_WORDS] >= MT_WORDS:
        _regenerate(state)
    pos = state[MT_WORDS]
    y = state[pos]
    state[MT_WORDS] = pos + np.uint32(1)
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


@jit(inline="always")
def random_interval(state, top):
    """A uniform integer in [0, top] for 0 <= top < 2**32 (NumPy's
    random_interval: masked 32-bit outputs, rejected while above top)."""
    if top == 0:
        return 0
    mask = np.uint32(top)
    mask |= mask >> np.uint32(1)
    mask |= mask >> np.uint32(2)
    mask |= mask >> np.uint32(4)
    mask |= mask >> np.uint32(8)
    mask |= mask >> np.uint32(16)
    value = next_uint32(state) & mask
    while value > np.uint32(top):
        value = next_uint32(state) & mask
    return np.int64(value)


@jit
def running_shuffles(state, order, orders, perm):
    """orders[e] = the running order after e + 1 more epochs: each epoch
    ``perm = arange(n)``, ``RandomState.shuffle(perm)``, ``order =
    order[perm]``, starting from ``order``; ``state`` (MT_WORDS + 1 uint32:
    the key, then the position) advances as the generator's would.  ``perm``
    is a scratch of n int64; ``orders`` has n columns (the caller checks:
    nothing here is bounds-checked)."""
    n = order.shape[0]
    for e in range(orders.shape[0]):
        for i in range(n):
            perm[i] = i
        for i in range(n - 1, 0, -1):
            j = random_interval(state, i)
            perm[i], perm[j] = perm[j], perm[i]
        for i in range(n):
            orders[e, i] = order[perm[i]] if e == 0 else orders[e - 1, perm[i]]
