"""One line on stderr when numba compiles fastnn's kernels (a cold cache).

The first run on a machine compiles the kernels for its CPU, which takes
seconds; without a word the command looks hung.  :func:`enable` installs a
listener on numba's ``"numba:compile"`` event.  numba broadcasts that event
only when a dispatcher really compiles: a signature already compiled in this
process, or loaded from the on-disk cache, broadcasts nothing.  So the line
appears on a cold cache only, and the listener prints it at most once per
process.

The CLI enables it; ``fastnn compile`` (fastnn/compile.py) prints its own
report instead.
"""
import sys
import threading

from numba.core import event

MESSAGE = "fastnn: compiling kernels for this CPU (first run only; 15-60 s, then cached)"

_lock = threading.Lock()
_listener = None


class _Notice(event.Listener):
    """Prints MESSAGE at the start of the first compilation of a fastnn function."""

    def __init__(self, stream):
        self.stream = stream
        self.printed = False

    def on_start(self, event_):
        if self.printed:
            return
        dispatcher = event_.data.get("dispatcher") if event_.data else None
        # numba's own jitted helpers may compile too (they are not cached);
        # only fastnn's kernels mean "the first run on this CPU"
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("fastnn."):
            return
        self.printed = True
        print(MESSAGE, file=self.stream, flush=True)

    def on_end(self, event_):
        pass


def enable(stream=None):
    """Print MESSAGE to ``stream`` (default: sys.stderr at the time of the print's
    first need) when a fastnn kernel compiles; idempotent, at most one line per
    process.  Returns True if the line has already been printed."""
    global _listener
    with _lock:
        if _listener is None:
            _listener = _Notice(stream if stream is not None else _Stderr())
            event.register("numba:compile", _listener)
        return _listener.printed


class _Stderr:
    """sys.stderr looked up when written to, so a later redirection (pytest's
    capture, contextlib.redirect_stderr) is honoured."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()
