"""The one place where fastnn chooses its numba options.

Every compiled function in the package is decorated with :func:`jit` (serial) or
:func:`pjit` (uses ``prange``).  Keeping the options here means one edit changes
them everywhere, and the on-disk cache key stays consistent.
"""
import os

# numba's 'omp' threading layer (GNU OpenMP) spins its idle threads by default.
# When anything else wants the cores -- the user's NumPy/OpenBLAS threads, another
# process -- the spinning threads and the working ones fight, and a training
# step with two parallel regions per batch collapsed (measured on the 2-core
# machine: spiral 2-100-3 at 2 threads fell from ~1.3-2.0 M to 17-27 k
# samples/s under load; with passive waiting it kept 1.3-2.0 M).  libgomp reads
# this when it is loaded, which numba does lazily at the first parallel call,
# so setting it here (before any fastnn kernel runs) is in time; setdefault
# keeps a value the user chose.  No effect if libgomp was loaded earlier.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

# fastmath without 'nnan'/'ninf': the reductions may be reassociated (that is
# what lets LLVM vectorise dot products) and multiply-adds contracted to FMA,
# but NaN and inf keep their meaning, so a diverging loss is still detected.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

# Without 'reassoc' and 'arcp', for elementwise arithmetic whose bits must not
# depend on which compiled copy of a function runs: numba optimises every
# callee again inside each caller it is linked into, a freshly compiled process
# calls the callee's own code and a process loading the caller from the cache
# the caller's copy, and with 'reassoc' LLVM may associate the two copies'
# arithmetic differently (losses.softmax_delta_row).  For loops without a
# reduction to vectorise.  A function keeps its flags when LLVM inlines it, but
# not through numba's inline="always" (the caller's flags apply).
STRICT_FASTMATH = frozenset({"nsz", "contract", "afn"})

JIT_OPTIONS = dict(
    nogil=True,
    cache=True,
    fastmath=set(FASTMATH),
    # 'numpy' error model: no division-by-zero branch that would block SIMD.
    error_model="numpy",
    boundscheck=False,
)


def jit(fn=None, **overrides):
    """Compile ``fn`` with the package's serial options (usable as ``@jit``)."""
    options = {**JIT_OPTIONS, **overrides}
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)


def pjit(fn=None, **overrides):
    """Compile ``fn`` with the package's options and ``parallel=True``."""
    return jit(fn, parallel=True, **overrides)
