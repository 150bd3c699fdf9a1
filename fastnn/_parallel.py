"""Guard for numba's parallel regions when Python threads call fastnn at once.

numba's fallback threading layer, workqueue, is not thread-safe: two Python
threads entering parallel code together can abort the whole process.  The omp
and tbb layers are safe.  Every call into a parallel kernel goes through
:func:`parallel_region`, which serialises the calls unless the layer in use is
known to be safe (before the first parallel call the layer is not known yet,
so that call is serialised too).  A serial call (threads=1) enters no
parallel region and needs no guard.
"""
import contextlib
import threading

import numba

_LOCK = threading.RLock()
_SAFE_LAYERS = ("omp", "tbb")


@contextlib.contextmanager
def num_threads(n):
    """Run the block with ``n`` numba threads (None: all of numba's pool), then
    restore the caller's setting."""
    if n is None:
        n = numba.config.NUMBA_NUM_THREADS
    previous = numba.get_num_threads()
    # more than numba's pool (e.g. a model saved on a bigger machine) runs on
    # the whole pool: the thread count never changes the results' bits
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    if n == previous:   # each set_num_threads takes numba's start-up locks
        yield
        return
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


_layer_safe = None   # known once a parallel region has run (the layer never changes)


def _layer_is_thread_safe():
    global _layer_safe
    if _layer_safe is None:
        try:
            _layer_safe = numba.threading_layer() in _SAFE_LAYERS
        except ValueError:  # no parallel region has run yet
            return False
    return _layer_safe


class parallel_region:
    """Context for one call into a parallel kernel (see the module docstring);
    ``with parallel_region(serial) as threads`` gives the number of threads
    the call runs on, for the kernel's ``threads`` argument.

    ``serial=True`` runs the call on this thread alone: for small steps
    waking the pool costs more than it saves.  Results are the same bits
    either way.  Every parallel kernel of fastnn given ``threads=1`` runs on
    the calling thread without entering a parallel region, so a serial call
    touches neither numba's thread count nor the lock: each
    numba.set_num_threads and get_num_threads takes numba's start-up locks,
    and the two of a serial call were about 3 us of a 2-100-3 spiral
    ``partial_fit`` (about 130 us).  A class rather than a generator-based
    context manager: about 1 us less a call, which a partial_fit loop of
    small batches pays every call.
    """

    __slots__ = ("serial", "locked")

    def __init__(self, serial=False):
        self.serial = serial
        self.locked = False

    def __enter__(self):
        if self.serial:
            return 1
        threads = numba.get_num_threads()
        if not _layer_is_thread_safe():
            _LOCK.acquire()
            self.locked = True
        return threads

    def __exit__(self, *exc):
        if self.locked:
            self.locked = False
            _LOCK.release()
        return False
