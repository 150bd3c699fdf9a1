"""Start-up: ``import fastnn`` plus the first fit of the spiral net (2-100-3,
300 samples, full batch, one epoch) in a fresh interpreter, with an empty
numba cache (cold: everything compiles) and a filled one (warm)."""
import subprocess
import sys

FIT = """
import fastnn
X, y = fastnn.spiral()
net = fastnn.Network([2, 100, 3], activation="relu", seed=0)
fastnn.Trainer(net, fastnn.SGD(lr=0.01, momentum=0.9), batch_size=300, seed=0).fit(X, y, epochs=1)
"""


def _cache_setup(path):
    # runs in the timed child before the clock starts; numba reads the
    # variable when it is first imported (inside the timed statement)
    return f"import os\nos.environ['NUMBA_CACHE_DIR'] = {path!r}\n"


class Startup:
    """timeraw_* of import + first fit, cold and warm numba cache."""

    timeout = 600
    repeat = 3
    number = 1

    def setup(self):
        # fill the package's own cache (if it is not full already), in its own
        # process: the warm run uses that cache, as a user's second run does.
        # (A cache directory of its own cost one more cold compile per run.)
        subprocess.run([sys.executable, "-c", FIT], check=True)

    def timeraw_import_first_fit_cold(self):
        setup = "import tempfile\n" + _cache_setup("__COLD__").replace(
            "'__COLD__'", "tempfile.mkdtemp(prefix='fastnn-asv-cold-')")
        return FIT, setup

    def timeraw_import_first_fit_warm(self):
        return FIT, ""
