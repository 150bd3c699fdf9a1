"""Guard for numba's parallel regions when Python threads call fastnn at once.

numba's fallback threading layer, workqueue, is not thread-safe: two Python
threads entering parallel code together can abort the whole process.  The omp
and tbb layers are safe.  Every call into a parallel kernel goes through
:func:`parallel_region`, which serialises the calls unless the layer in use is
known to be safe (before the first parallel call the layer is not known yet,
so that call is serialised too).
"""
import contextlib
import threading

import numba

_LOCK = threading.RLock()
_SAFE_LAYERS = ("omp", "tbb")


def _layer_is_thread_safe():
    try:
        return numba.threading_layer() in _SAFE_LAYERS
    except ValueError:  # no parallel region has run yet
        return False


@contextlib.contextmanager
def parallel_region(serial=False):
    """Context for one call into a parallel kernel (see the module docstring).

    ``serial=True`` runs the call on this thread alone (numba's thread count is
    per calling thread and restored afterwards): for small steps waking the
    pool costs more than it saves.  Results are the same bits either way.
    """
    previous = numba.get_num_threads()
    if serial:
        numba.set_num_threads(1)
    try:
        if _layer_is_thread_safe():
            yield
        else:
            with _LOCK:
                yield
    finally:
        if serial:
            numba.set_num_threads(previous)
