"""The one place where fastnn chooses its numba options.

Every compiled function in the package is decorated with :func:`jit` (serial) or
:func:`pjit` (uses ``prange``).  Keeping the options here means one edit changes
them everywhere, and the on-disk cache key stays consistent.
"""
import numba

# fastmath without 'nnan'/'ninf': the reductions may be reassociated (that is
# what lets LLVM vectorise dot products) and multiply-adds contracted to FMA,
# but NaN and inf keep their meaning, so a diverging loss is still detected.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

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
