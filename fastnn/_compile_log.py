"""Which functions numba compiled, and how long each took.

:class:`CompileLog` listens to numba's ``"numba:compile"`` event (broadcast
only on a real compilation, never for a cache hit).  A function's compilation
includes that of the functions it calls for the first time, so the events
nest; the log keeps both the inclusive time and the exclusive ("self") time,
the inclusive time minus that of the compilations nested in it, so that the
self times add up to the total without double counting.  Times are CPU
seconds of the process (time.process_time): numba compiles on the calling
thread, under its compiler lock, and CPU time is steadier than wall time on a
loaded machine.

Used by ``fastnn compile`` (fastnn/compile.py) and by the start-up breakdown
(``python -m fastnn.bench.startup breakdown``).
"""
import threading
import time

from numba.core import event


def _name(dispatcher):
    fn = getattr(dispatcher, "py_func", None)
    if fn is None:
        return repr(dispatcher)
    return f"{fn.__module__}.{fn.__qualname__}"


class CompileLog(event.Listener):
    """Records every compilation while installed (``with CompileLog() as log``).

    ``entries``: one dict per compiled signature, in the order the compilations
    finished: ``name`` (module.function), ``args`` (the signature's types as
    text), ``seconds`` (inclusive CPU time), ``self_seconds`` (minus nested
    compilations).
    """

    def __init__(self):
        self.entries = []
        self._stack = threading.local()

    def _frames(self):
        if not hasattr(self._stack, "frames"):
            self._stack.frames = []
        return self._stack.frames

    def on_start(self, event_):
        # [start time, nested seconds]
        self._frames().append([time.process_time(), 0.0])

    def on_end(self, event_):
        frames = self._frames()
        if not frames:   # installed in the middle of a compilation
            return
        start, nested = frames.pop()
        seconds = time.process_time() - start
        if frames:
            frames[-1][1] += seconds
        data = event_.data or {}
        self.entries.append({
            "name": _name(data.get("dispatcher")),
            "args": ", ".join(str(a) for a in data.get("args", ())),
            "seconds": seconds,
            "self_seconds": seconds - nested,
        })

    def __enter__(self):
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc):
        event.unregister("numba:compile", self)
        return False

    def total_seconds(self):
        """CPU time spent compiling (the sum of the self times)."""
        return sum(e["self_seconds"] for e in self.entries)

    def by_function(self):
        """[(name, self seconds, compiled signatures)] per function, largest first."""
        return by_function(self.entries)


def by_function(entries):
    """[(name, self seconds, compiled signatures)] summed per function over
    CompileLog ``entries``, largest first."""
    acc = {}
    for e in entries:
        s, n = acc.get(e["name"], (0.0, 0))
        acc[e["name"]] = (s + e["self_seconds"], n + 1)
    return sorted(((k, s, n) for k, (s, n) in acc.items()), key=lambda r: -r[1])
