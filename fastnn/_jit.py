"""The one place where fastnn chooses its numba options.

Every compiled function in the package is decorated with :func:`jit` (serial) or
:func:`pjit` (uses ``prange``).  Keeping the options here means one edit changes
them everywhere, and the on-disk cache key stays consistent.
"""
import os

# numba's 'omp' threading layer (GNU OpenMP) lets an idle thread spin for a
# while before it sleeps.  A training step is two parallel regions a few
# microseconds apart, so how long the threads spin decides what each region
# costs (measured on a 2-core znver5: an empty 2-thread region 1.4 us when
# the threads are still spinning, 25-50 us when they must be woken):
# - libgomp's default (300000 spins, milliseconds) made threads that spin
#   fight the user's BLAS threads and other processes for the cores (spiral
#   at 2 threads under load: 17-27k samples/s, against 1.3-2.0M sleeping);
# - sleeping at once (OMP_WAIT_POLICY=PASSIVE, this package's earlier
#   setting) pays the wake-up twice a step: mnist (784-256-10, batch 128) at
#   2 threads 469-502 us a step;
# - GOMP_SPINCOUNT=1000 (20-40 us of spinning) covers the gap between the
#   regions of a step but not much more: 340-350 us a step idle; with
#   another process busy on one of the two cores 728-740 us, against 625-634
#   sleeping.
# So 1000, unless the user chose a policy or a spin count.  libgomp reads
# these when it is loaded, which numba does lazily at the first parallel
# call, so setting them here (before any fastnn kernel runs) is in time; no
# effect if libgomp was loaded earlier.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

import functools  # noqa: E402
import hashlib  # noqa: E402

import numba  # noqa: E402
from numba.core import caching  # noqa: E402
from numba.core.runtime import rtsys  # noqa: E402

# fastmath without 'nnan'/'ninf': the reductions may be reassociated (that is
# what lets LLVM vectorise dot products) and multiply-adds contracted to FMA,
# but NaN and inf keep their meaning, so a diverging loss is still detected.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

# Without 'reassoc' and 'arcp', for elementwise arithmetic whose bits must not
# depend on which compiled copy of a function runs: numba optimises every
# callee again inside each caller it is linked into, a freshly compiled process
# calls the callee's own code and a process loading the caller from the cache
# the caller's copy, and with 'reassoc' LLVM may associate the two copies'
# arithmetic differently (losses.softmax_xent_grad).  For loops without a
# reduction to vectorise.  A function keeps its flags when LLVM inlines it, but
# not through numba's inline="always" (the caller's flags apply).
STRICT_FASTMATH = frozenset({"nsz", "contract", "afn"})

# numba keys a cached function by the source of its own file, but the cached
# code holds what it calls from other files, inlined or by shared symbol
# (kernels/shared.py).  A function whose file did not change was thus loaded
# with another version's callees: stale code, or a call of a shared symbol
# that version does not define (seen in CI: asv timing two commits in one
# environment, "LLVM ERROR: Symbol not found: fastnn.pack_b_rows...", the
# process aborted).  So every compiled function of fastnn is stamped with the
# source of all of them: any change to one recompiles all, as it must.
_COMPILED_SOURCES = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels"),)


def sources_stamp(paths):
    """sha256 over the bytes of the .py files in ``paths`` (files or folders,
    in sorted order): the cache stamp of every compiled function of fastnn."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))
        else:
            files.append(path)
    digest = hashlib.sha256()
    for name in files:
        with open(name, "rb") as f:
            digest.update(os.path.basename(name).encode() + b"\0" + f.read())
    return digest.digest()


@functools.lru_cache(maxsize=None)
def _package_stamp():
    """sources_stamp of fastnn's compiled sources, once per process (0.4 ms)."""
    return sources_stamp(_COMPILED_SOURCES + (os.path.abspath(__file__),))


def _stamped(locator):
    """``locator`` (a numba cache locator class) for fastnn's own functions,
    with the stamp of all of fastnn's compiled sources."""
    root = os.path.dirname(os.path.abspath(__file__)) + os.sep

    class PackageStamped(locator):
        def get_source_stamp(self):
            return _package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(root):
                return None
            return super().from_function(py_func, py_file)

    PackageStamped.__name__ = f"FastnnPackage{locator.__name__}"
    return PackageStamped


# before numba's own locators, in their order (NUMBA_CACHE_DIR, beside the
# source, the user-wide cache for a read-only install)
caching.CacheImpl._locator_classes[:0] = [
    _stamped(c) for c in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                          caching.UserWideCacheLocator)]


class _LoadingCache(caching.FunctionCache):
    """numba's cache of one function, loading without refreshing the target.

    numba refreshes its target context before loading each cached function:
    the first load in a process imports and registers every implementation
    numba has (linalg, random, typed containers, ...), about 0.1 s of a warm
    ``fastnn train`` whose 2000 epochs take 0.08 s.  Loaded machine code
    needs none of them, only numba's runtime (NRT), whose C helpers it may
    call; and numba refreshes the context itself before anything is
    compiled (compiler.compile_extra) or lowered (BaseContext.get_function).
    """

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


JIT_OPTIONS = dict(
    nogil=True,
    cache=True,
    fastmath=set(FASTMATH),
    # 'numpy' error model: no division-by-zero branch that would block SIMD.
    error_model="numpy",
    boundscheck=False,
    # no C-callable wrapper per compiled function (for numba's first-class
    # function values, which fastnn never uses): its lowering and machine
    # code were about 0.5 s of a 17.5-18 s cold first run (rocketlake)
    no_cfunc_wrapper=True,
)


def jit(fn=None, refcount=True, **overrides):
    """Compile ``fn`` with the package's serial options (usable as ``@jit``).

    ``refcount=False``: numba's reference counting off (its NRT), for a
    kernel that allocates nothing, every array coming from its caller.
    numba increments and decrements an array's count, atomically, each time
    it binds an array to a name, takes a view or slice, reads one from a
    bundle or passes one to a call; the code of a training step does that
    hundreds of times (a 2-100-3 spiral step of 51 us made about 1860 such
    calls, 19 % of its time by perf).  The arrays live as long as the
    Python call that passed them in, so the counts are not needed inside.
    Such a kernel can neither allocate nor return a view it made (numba
    refuses to compile either: np.empty, or returning anything but an array
    it was given), and neither can an overload it calls (typed with the
    caller's flags); a prange kernel needs reference counting for the
    parfor's own scheduling arrays.
    """
    # set either way: numba's callees inherit the flag from their caller
    # when they do not set it, and a callee that allocates (the products
    # for tests and benchmarks, the full-batch gradient's row list) must
    # keep its reference counting
    options = {**JIT_OPTIONS, **overrides, "_nrt": bool(refcount)}
    if fn is None:
        return lambda f: _with_loading_cache(numba.njit(**options)(f))
    return _with_loading_cache(numba.njit(**options)(fn))


# the numba internals _LoadingCache.load_overload calls (0.68 has them): without
# them, the dispatchers keep numba's own cache
_LOADS_WITHOUT_REFRESH = all(hasattr(caching.FunctionCache, name) for name in
                             ("_load_overload", "_guard_against_spurious_io_errors"))


def _with_loading_cache(dispatcher):
    """``dispatcher`` with its cache replaced by a _LoadingCache (numba made
    a FunctionCache when it read cache=True), where numba has what it needs."""
    if (_LOADS_WITHOUT_REFRESH and getattr(dispatcher, "_cache", None) is not None
            and dispatcher._cache.__class__ is caching.FunctionCache):
        dispatcher._cache = _LoadingCache(dispatcher.py_func)
    return dispatcher


def pjit(fn=None, **overrides):
    """Compile ``fn`` with the package's options and ``parallel=True``."""
    return jit(fn, parallel=True, **overrides)
