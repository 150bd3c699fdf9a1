"""scikit-learn's epoch order, drawn in compiled code: NumPy's legacy
``RandomState.shuffle`` on a Mersenne Twister state, bit for bit.

The estimators visit the rows in scikit-learn's order: each epoch the
running order is shuffled again with the fit's ``RandomState``
(epoch_order.RunningShuffle).  Drawn in Python, that cost about 10 us an
epoch (an ``arange``, ``RandomState.shuffle``, a fancy index and a snapshot
of the generator), a sixth of a 2-100-3 spiral epoch.  Here a compiled chunk's
orders are drawn in one call on the generator's raw state (the MT19937 key
and position, seen as an array over the generator's own memory:
epoch_order._live_mt_state): the same orders and the same final state as
the Python loop.

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


@jit(refcount=False)
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


@jit(refcount=False)
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


# ---- PCG64 (the Trainer's default order: Generator.permutation) ----------
# NumPy's PCG64 (O'Neill's PCG XSL RR 128/64): a 128-bit LCG stepped before
# each 64-bit output; 32-bit draws use each 64-bit output twice, low half
# first (has_uint32 / uinteger hold the high half).  128-bit numbers travel
# as (high, low) uint64 pairs: a state array of 6 uint64 holds the state,
# the increment, has_uint32 and uinteger.
_PCG_MULT_HIGH = np.uint64(0x2360ED051FC65DA4)
_PCG_MULT_LOW = np.uint64(0x4385DF649FCCF645)
_LOW32 = np.uint64(0xFFFFFFFF)


@jit(inline="always")
def _mul_64x64(a, b):
    """The 128-bit product of two uint64 as (high, low)."""
    a_lo, a_hi = a & _LOW32, a >> np.uint64(32)
    b_lo, b_hi = b & _LOW32, b >> np.uint64(32)
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> np.uint64(32)) + (p1 & _LOW32) + (p2 & _LOW32)
    high = p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
    return high, (mid << np.uint64(32)) | (p0 & _LOW32)


@jit(inline="always")
def _pcg64_next64(pcg):
    """Step the LCG (state = state * MULT + inc, mod 2**128), then the
    XSL-RR output of the new state."""
    s_hi, s_lo = pcg[0], pcg[1]
    high, low = _mul_64x64(s_lo, _PCG_MULT_LOW)
    high += s_hi * _PCG_MULT_LOW + s_lo * _PCG_MULT_HIGH
    new_lo = low + pcg[3]
    high += pcg[2] + (np.uint64(1) if new_lo < low else np.uint64(0))
    pcg[0], pcg[1] = high, new_lo
    x = high ^ new_lo
    rot = high >> np.uint64(58)
    return (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))


@jit(inline="always")
def _pcg64_next32(pcg):
    """NumPy's pcg64_next32: the buffered high half, else a new 64-bit draw."""
    if pcg[4] != 0:
        pcg[4] = 0
        return np.uint32(pcg[5])
    draw = _pcg64_next64(pcg)
    pcg[4] = 1
    pcg[5] = draw >> np.uint64(32)
    return np.uint32(draw & _LOW32)


@jit(refcount=False)
def pcg64_permutations(pcg, orders):
    """orders[e] = Generator.permutation(n) for each of len(orders) epochs
    (arange(n) shuffled: i = n-1 down to 1 swapped with random_interval(i)
    on 32-bit draws), ``pcg`` (6 uint64: state high and low, inc high and
    low, has_uint32, uinteger) advanced as the generator's would be."""
    n = orders.shape[1]
    for e in range(orders.shape[0]):
        perm = orders[e]
        for i in range(n):
            perm[i] = i
        for i in range(n - 1, 0, -1):
            mask = np.uint32(i)
            mask |= mask >> np.uint32(1)
            mask |= mask >> np.uint32(2)
            mask |= mask >> np.uint32(4)
            mask |= mask >> np.uint32(8)
            mask |= mask >> np.uint32(16)
            value = _pcg64_next32(pcg) & mask
            while value > np.uint32(i):
                value = _pcg64_next32(pcg) & mask
            j = np.int64(value)
            perm[i], perm[j] = perm[j], perm[i]
